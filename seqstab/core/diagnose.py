"""Why did it explode? The four mechanisms, ranked by what was measured at a guard event.

An update the explosion guard flags (:mod:`seqstab.guard`) gets a **diagnosis**: each mechanism that can make a
gradient explode, with the evidence measured for it and a **score**, the log10 of the amplification that evidence
shows (1 = tenfold; None = not measurable here), ranked highest first, with the remedies to try as seqstab settings:

=========  ===========================================================================  ==========================
mechanism  evidence (score = log10 of)                                                  measured
=========  ===========================================================================  ==========================
time       ``‖∂L/∂h_t‖`` of the top recurrent layer going back over the chunk: its       at the event: one more
           peak over its value at the last scored step (growth per step, where it        forward + backward of the
           peaked)                                                                      chunk, weights untouched
depth      at the last scored step, ``‖∂L/∂h‖`` of the bottom layer over the top         the same pass
           layer's (the per-layer ratio toward the input)
optimizer  the relative size ``‖Δθ‖/‖θ‖`` of the last applied update for the tensor     O(1) per update: the lr,
           it moved most, over that tensor's median over recent updates, or over        the clip scale, the
           ``REL_STEP`` (a step of 1 % of a tensor's norm) when that is larger           policy's per-tensor norms
data       the batch's largest input ``|x|`` over the median of recent batches'          O(1) per update: one
           (inf for a non-finite input)                                                  ``aminmax`` of the chunk
=========  ===========================================================================  ==========================

Time and depth are kept apart by where they are read: the time ratio within the top layer (nothing above it adds
depth), the depth ratio at the last scored step (nothing after it adds time). ``‖Δθ‖`` is the SGD step
``lr · s · ‖g_i‖`` (``s`` the clip scale, ``‖g_i‖`` the tensor's pre-clip norm): exact for plain SGD, a proxy for
optimizers that rescale or accumulate (Adam moves each coordinate by about ``lr`` whatever the gradient).
``‖θ‖`` is read at the event. A mechanism scoring ``IMPLICATED`` (1: tenfold) or more is a cause; the top one is
the diagnosis's ``top`` (None when none reaches it).

In a storm of events the flow is measured again only ``FLOW_EVERY`` (10) updates after it last was; the events in
between carry its findings, marked with the update they were measured at.

Between events the guard pays :meth:`Tracker.observe` per update: a few appends and one ``aminmax`` kernel, no host
sync. ``python -m seqstab.replay`` recomputes the flow profile of the snapshot's chunk and ranks it with the
optimizer and data evidence the run stored in the snapshot.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

MECHANISMS = ("time", "depth", "optimizer", "data")
IMPLICATED = 1.0  # score (log10 of the measured amplification) from which a mechanism counts as a cause
REL_STEP = 0.01  # a step moving a tensor by 1 % of its norm: large for any optimizer
FLOW_EVERY = 10  # in a storm of events, the flow is measured again only this many updates after it last was


@dataclass
class Finding:
    """One mechanism's evidence: ``score`` is the log10 of the amplification measured (None: not measured)."""

    mechanism: str
    score: float | None
    evidence: str
    remedies: list[str] = field(default_factory=list)


# -- the O(1) running statistics --------------------------------------------------------------------------------


class Tracker:
    """What the optimizer and data evidence need from the updates before an event, kept in O(1) per update.

    Per update: the step's scale (``lr`` × clip scale, floats already read back), a reference to the clipping
    policy's per-tensor pre-clip norms (a device tensor it computed anyway) and the chunk's smallest and largest
    input (one ``aminmax``, left on the device). Nothing is read back until an event.
    """

    def __init__(self, window: int = 50):
        self.steps: deque[tuple[float, torch.Tensor | None, float]] = deque(
            maxlen=window
        )  # applied: lr·s, ‖g_i‖, lr·‖g‖
        self.ranges: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=window)  # batches' (min x, max x)
        self.flow: tuple[int, Finding, Finding] | None = None  # the last event's flow findings and their update

    def state_dict(self) -> dict[str, Any]:
        """Plain values (a weights_only checkpoint): one host sync, at a save."""
        return {
            "steps": [[scale, None if n is None else n.tolist(), step] for scale, n, step in self.steps],
            "ranges": [[float(lo), float(hi)] for lo, hi in self.ranges],
            "flow": None if self.flow is None else [self.flow[0], asdict(self.flow[1]), asdict(self.flow[2])],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.clear()
        for scale, norms, step in state.get("steps", []):
            tensor = None if norms is None else torch.tensor(norms, dtype=torch.float64)
            self.steps.append((float(scale), tensor, float(step)))
        self.ranges.clear()
        for lo, hi in state.get("ranges", []):
            self.ranges.append((torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)))
        flow = state.get("flow")
        self.flow = None if flow is None else (int(flow[0]), Finding(**flow[1]), Finding(**flow[2]))

    def observe(self, update: Any, lr: float | None, applied: bool, x: torch.Tensor | None) -> None:
        """After the guard's decision on ``update``: remember its step (if applied) and its input range."""
        if applied and lr is not None:
            pre, post = update.values["grad/norm_total"], update.values.get("grad/norm_total_clipped", math.nan)
            scale = post / pre if pre > 0 and math.isfinite(pre) and math.isfinite(post) else 1.0
            self.steps.append((lr * scale, update.clip.tensor_norms, lr * post))
        if x is not None and x.numel():
            self.ranges.append(torch.aminmax(x.detach()))  # one kernel, left on the device (half abs().amax()'s cost)


def inputs_of(chunk: Any) -> torch.Tensor | None:
    """The floating-point inputs of a chunk (``chunk["x"]`` of seqstab's tasks) or of a batch (its first floating
    tensor); None for token ids or what holds none."""
    if isinstance(chunk, dict):
        chunk = chunk.get("x", next(iter(chunk.values()), None))
    elif isinstance(chunk, (list, tuple)):
        chunk = next((c for c in chunk if isinstance(c, torch.Tensor) and c.is_floating_point()), None)
    return chunk if isinstance(chunk, torch.Tensor) and chunk.is_floating_point() else None


def optimizer_path(optimizer: Any) -> str | None:
    """``torch.optim.SGD`` for an SGD optimizer (or Lightning's wrapper of one); the full class path otherwise."""
    if optimizer is None:
        return None
    cls = type(getattr(optimizer, "optimizer", optimizer))
    return f"torch.optim.{cls.__name__}" if getattr(torch.optim, cls.__name__, None) is cls else _path(cls)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def learning_rate(optimizer: torch.optim.Optimizer | None) -> float | None:
    if optimizer is None or not optimizer.param_groups:
        return None
    return float(optimizer.param_groups[0]["lr"])


def optimizer_finding(tracker: Tracker, module: nn.Module, remedies: Remedies) -> Finding:
    """The last applied update's relative step for the tensor it moved most, against that tensor's recent median."""
    if not tracker.steps:
        return Finding("optimizer", None, "no update was applied before this one", [])
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    weights = torch.stack([torch.linalg.vector_norm(p.detach().double()) for _, p in named]).tolist()  # one sync
    rows = []  # per applied update: each tensor's step lr * s * ‖g_i‖
    total = math.sqrt(sum(w * w for w in weights)) or 1.0
    for scale, norms, step in tracker.steps:
        if norms is not None and len(norms) == len(named):
            rows.append([scale * n for n in norms.detach().double().tolist()])
        else:  # no per-tensor norms: the global step lr * ‖g‖, as if spread by weight
            rows.append([step * w / total for w in weights])
    last = rows[-1]
    rel = [s / w if w > 0 else math.inf for s, w in zip(last, weights, strict=True)]
    worst = max(range(len(rel)), key=lambda i: _sortable(rel[i]))
    name, step, weight = named[worst][0], last[worst], weights[worst]
    history = [row[worst] for row in rows[:-1] if math.isfinite(row[worst])]
    median = statistics.median(history) if history else None
    ratios = [rel[worst] / REL_STEP]
    text = (
        f"the last applied update moved {name} by {rel[worst]:.3g} of its norm (step lr·‖g‖ = {step:.3g}, "
        f"‖θ‖ = {weight:.3g} now)"
    )
    if median:
        ratios.append(step / median)
        text += f", {step / median:.3g}x its median step over the {len(history)} updates before"
    score = _log10(max(ratios))
    return Finding("optimizer", score, text, remedies.optimizer())


def data_finding(tracker: Tracker, x: torch.Tensor | None, remedies: Remedies) -> Finding:
    """The batch's largest ``|x|`` against the median of the recent batches' (inf for a non-finite input)."""
    if x is None:
        return Finding("data", None, "the inputs are not floating-point (token ids): no input range", [])
    x = x.detach()
    finite, amax = (v.item() for v in (torch.isfinite(x).all(), x.abs().amax()))
    if not finite:
        return Finding("data", math.inf, "the batch holds non-finite inputs (nan or inf)", remedies.data())
    history = []
    if tracker.ranges:  # max |x| of each batch: one sync
        history = torch.stack([torch.stack(pair) for pair in tracker.ranges]).double().abs().amax(dim=1).tolist()
    history = [v for v in history if math.isfinite(v)]
    if not history:
        return Finding("data", None, f"the batch's inputs reach |x| = {amax:.3g}; no earlier batch to compare", [])
    median = statistics.median(history)
    ratio = amax / median if median > 0 else (math.inf if amax > 0 else 1.0)
    text = (
        f"the batch's inputs reach |x| = {amax:.3g} against a median of {median:.3g} over the last "
        f"{len(history)} batches ({ratio:.3g}x)"
    )
    return Finding("data", _log10(ratio), text, remedies.data())


# -- time and depth: the flow profile of the chunk --------------------------------------------------------------


def flow_profile(net: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> np.ndarray | None:
    """``(L, k)``: ``‖∂L/∂h_t‖`` (float64) per recurrent layer (bottom first) and step of the chunk, through the
    recurrence, from one more forward (``loss_fn``) and backward; parameters' ``.grad`` and the RNG stay as they
    were. None when the net offers no recurrent layers (:func:`seqstab.monitor.flow_layers`)."""
    from seqstab.core.monitor import _detach, flow_layers, hidden_state_grads

    layers = flow_layers(net)
    if not layers:
        return None
    seen: list[tuple[torch.Tensor, Any, torch.Tensor] | None] = [None] * len(layers)

    def keep(i, module, args, output):
        seen[i] = (args[0].detach(), _detach(args[1] if len(args) > 1 else None), output[0])

    handles = [layer.register_forward_hook(lambda m, a, o, i=i: keep(i, m, a, o)) for i, layer in enumerate(layers)]
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
            loss = loss_fn()
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in seen):
        return None
    outs = [s[2] for s in seen]
    wanted = [i for i, o in enumerate(outs) if o.requires_grad]
    grads = torch.autograd.grad(loss, [outs[i] for i in wanted], allow_unused=True) if wanted else []
    by_layer = dict(zip(wanted, grads, strict=True))
    rows = []
    for i, (layer, (x, hx, out)) in enumerate(zip(layers, seen, strict=True)):
        grad = by_layer.get(i)
        if grad is None:
            rows.append(torch.zeros(out.shape[1], dtype=torch.float64))
            continue
        total = hidden_state_grads(layer, x, hx, grad)  # (B, k, H)
        rows.append(torch.linalg.vector_norm(total.double(), dim=(0, 2)).cpu())  # (k,)
    return torch.stack(rows).numpy()


def time_and_depth(profile: np.ndarray | None, why: str, remedies: Remedies) -> tuple[Finding, Finding]:
    """The time finding (within the top layer) and the depth finding (at the last scored step) of a profile."""
    if profile is None:
        return Finding("time", None, why), Finding("depth", None, why)
    layers, steps = profile.shape
    top = profile[-1]
    scored = np.nonzero(top)[0]
    if not len(scored):
        none = "no gradient reaches the recurrent layers in this chunk"
        return Finding("time", None, none), Finding("depth", None, none)
    ref = int(scored[-1])  # the last step with a gradient: nothing after it adds time
    return _time(top, ref, steps, remedies), _depth(profile[:, ref], ref, remedies)


def _time(top: np.ndarray, ref: int, steps: int, remedies: Remedies) -> Finding:
    head = top[: ref + 1]
    bad = np.nonzero(~np.isfinite(head))[0]
    if len(bad):
        text = f"‖∂L/∂h_t‖ of the top layer is non-finite from step {int(bad[-1]) + 1} of {steps} back"
        return Finding("time", math.inf, text, remedies.time(math.inf, steps, int(bad[-1]), ref))
    peak = int(np.argmax(head))
    amplification = float(head[peak] / head[ref])
    growth = float((head[0] / head[ref]) ** (1.0 / ref)) if ref > 0 and head[0] > 0 else 1.0
    text = (
        f"‖∂L/∂h_t‖ of the top layer grows {growth:.3g}x per step back over the {steps}-step chunk and peaks at step "
        f"{peak + 1}, {amplification:.3g}x its value at step {ref + 1}"
    )
    return Finding("time", _log10(amplification), text, remedies.time(growth, steps, peak, ref))


def _depth(at_ref: np.ndarray, ref: int, remedies: Remedies) -> Finding:
    layers = len(at_ref)
    if layers < 2:
        return Finding("depth", None, "one recurrent layer: no depth to grow through")
    bottom, top = float(at_ref[0]), float(at_ref[-1])
    if not math.isfinite(bottom):
        return Finding("depth", math.inf, f"‖∂L/∂h‖ is non-finite at the bottom layer (step {ref + 1})", [])
    if top <= 0:
        return Finding("depth", None, f"no gradient at the top layer at step {ref + 1}")
    ratio = bottom / top
    per_layer = ratio ** (1.0 / (layers - 1))
    peak = int(np.argmax(np.nan_to_num(at_ref, nan=-1.0)))
    text = (
        f"at step {ref + 1}, ‖∂L/∂h‖ grows {per_layer:.3g}x per layer down the {layers} layers: {ratio:.3g}x at the "
        f"bottom layer against the top (largest at layer {peak})"
    )
    return Finding("depth", _log10(ratio), text, remedies.depth(layers))


# -- the remedies, as seqstab settings -----------------------------------------------------------------------------


@dataclass
class Remedies:
    """The settings to try for each mechanism, named only where they exist for the run's net and optimizer.

    Args:
        recurrent_net: The net is ``seqstab.nets.RecurrentNet`` (its ``init``, ``residual`` ... exist).
        cell: Its cell (``rnn``, ``lstm``, ``gru``).
        lr: The optimizer's learning rate (None: no optimizer).
        optimizer_class: Its class path (``--optimizer`` must name it for ``--optimizer.lr`` to be accepted).
        clipped: The run already clips (``NormClip`` or another policy than ``NoClip``).
    """

    recurrent_net: bool = False
    cell: str | None = None
    lr: float | None = None
    optimizer_class: str | None = None
    clipped: bool = False

    def _clip(self) -> list[str]:
        return [] if self.clipped else ["--model.clipping seqstab.clipping.NormClip --model.clipping.max_norm 1"]

    def time(self, growth: float, steps: int, peak: int, ref: int) -> list[str]:
        """Truncate so that the growth stays within tenfold: ``log 10 / log growth`` steps when it grows steadily,
        else half the distance from where it peaked to the last scored step."""
        steady = math.isfinite(growth) and growth > 1
        k = int(math.log(10) / math.log(growth)) if steady else (ref - peak) // 2
        tips = [f"--model.tbptt_steps {max(1, min(k, steps - 1))}", *self._clip()]
        if self.recurrent_net:
            tips.append("--model.net.init orthogonal")
            if self.cell == "rnn":
                tips.append("--model.net.cell lstm")
        return tips

    def depth(self, layers: int) -> list[str]:
        if not self.recurrent_net:
            return ["fewer layers, residual connections or normalisation between layers"]
        return [
            "--model.net.residual true",
            "--model.net.layer_norm true",
            f"--model.net.num_layers {max(1, layers // 4)}",
            "--model.net.init xavier",
        ]

    def optimizer(self) -> list[str]:
        if not (self.lr and self.optimizer_class):
            return self._clip()
        return [f"--optimizer {self.optimizer_class} --optimizer.lr {self.lr / 100:g}", *self._clip()]

    def data(self) -> list[str]:
        return ["--model.guard.policy skip (hold such batches back)", "clean or normalise the data"]


def remedies_for(net: nn.Module | None, clipping: Any, optimizer: Any = None) -> Remedies:
    """The :class:`Remedies` of a run with this net, clipping policy and optimizer (None: name no learning rate)."""
    from seqstab.core.clipping import NoClip
    from seqstab.nets.recurrent import RecurrentNet

    return Remedies(
        recurrent_net=isinstance(net, RecurrentNet),
        cell=getattr(net, "cell", None),
        lr=learning_rate(getattr(optimizer, "optimizer", optimizer)),
        optimizer_class=optimizer_path(optimizer),
        clipped=clipping is not None and not isinstance(clipping, NoClip),
    )


# -- ranking and what is written ----------------------------------------------------------------------------------


def rank(findings: list[Finding]) -> dict[str, Any]:
    """``{"top": mechanism or None, "ranked": [finding as a dict, ...]}``, highest score first (None last)."""
    ranked = sorted(findings, key=lambda f: _known(f.score), reverse=True)
    top = ranked[0].mechanism if ranked and _known(ranked[0].score) >= IMPLICATED else None
    return {"top": top, "ranked": [_json(asdict(f)) for f in ranked]}


def diagnose_event(run: Any, update: Any, tracker: Tracker) -> dict[str, Any]:
    """The diagnosis of ``update`` (a guard event) from the live run: flow measured now, the rest from ``tracker``."""
    module = run.module
    clipping = getattr(getattr(module, "core", None), "clipping", None)
    remedies = remedies_for(run.net, clipping, run.optimizer)
    if tracker.flow is not None and update.step - tracker.flow[0] < FLOW_EVERY:  # an event storm: measured lately
        step, time, depth = tracker.flow
        time, depth = (replace(f, evidence=f"{f.evidence} (measured at update {step})") for f in (time, depth))
    else:
        time, depth = _flow_findings(run, update, remedies)
        tracker.flow = (update.step, time, depth)
    x = inputs_of(update.chunk)
    return rank(
        [
            time,
            depth,
            optimizer_finding(tracker, module, remedies),
            data_finding(tracker, x, remedies),
        ]
    )


def _flow_findings(run: Any, update: Any, remedies: Remedies) -> tuple[Finding, Finding]:
    """Time and depth from the flow profile of the event's chunk, measured now on the live module."""
    module = run.module
    why = "the net offers no recurrent layers to follow (seqstab.nets: recurrent contract)"
    profile = None
    if hasattr(module, "chunk_loss") and isinstance(update.chunk, dict):
        try:
            profile = flow_profile(run.net, lambda: module.chunk_loss(update.chunk, update.hidden_in)[0])
        except Exception as err:  # a measurement must never end the run it explains
            why = f"the flow could not be measured ({type(err).__name__}: {err})"
    else:
        why = "measured by python -m seqstab.replay (the run's loss is not a seqstab task's chunk loss)"
    return time_and_depth(profile, why, remedies)


def rediagnose(stored: dict[str, Any] | None, profile: np.ndarray | None, why: str, remedies: Remedies) -> dict:
    """Replay: the flow findings recomputed from ``profile``, the optimizer and data findings as the run stored them."""
    time, depth = time_and_depth(profile, why, remedies)
    kept = {f["mechanism"]: f for f in (stored or {}).get("ranked", [])}
    others = []
    for name in ("optimizer", "data"):
        f = kept.get(name)
        if f is None:
            others.append(Finding(name, None, "not recorded in the snapshot"))
        else:
            score = f["score"] if not isinstance(f["score"], str) else float(f["score"])
            others.append(Finding(name, score, f["evidence"], list(f.get("remedies", []))))
    return rank([time, depth, *others])


def lines(diagnosis: dict[str, Any]) -> list[str]:
    """The diagnosis as console lines: the verdict, then each mechanism with its score, evidence and remedies."""
    top = diagnosis.get("top")
    out = [
        f"why: {top} ({_times(diagnosis['ranked'][0]['score'])} amplification)"
        if top
        else "why: no mechanism stands out (none shows a tenfold amplification)"
    ]
    for i, f in enumerate(diagnosis["ranked"], 1):
        out.append(f"  {i}. {f['mechanism']:<9} {_times(f['score']):>10}  {f['evidence']}")
        if f["remedies"] and f["score"] is not None and _score(f["score"]) >= IMPLICATED:
            out.append(f"     try: {'; '.join(f['remedies'])}")
    return out


def markdown(diagnosis: dict[str, Any]) -> str:
    rows = ["| rank | mechanism | amplification | evidence | try |", "|---|---|---|---|---|"]
    for i, f in enumerate(diagnosis["ranked"], 1):
        tips = "; ".join(f"`{t}`" for t in f["remedies"]) if f["remedies"] else ""
        rows.append(f"| {i} | {f['mechanism']} | {_times(f['score'])} | {f['evidence']} | {tips} |")
    return f"**why**: {diagnosis.get('top') or 'no mechanism stands out'}\n\n" + "\n".join(rows)


def _times(score: float | str | None) -> str:
    if score is None:
        return "n/a"
    value = _score(score)
    if value == math.inf:
        return "inf"
    return f"10^{value:.1f}" if abs(value) >= 3 else f"{10**value:.3g}x"


def _score(score: float | str) -> float:
    return float(score)


def _log10(ratio: float) -> float:
    if math.isnan(ratio):
        return math.nan
    if ratio <= 0:
        return -math.inf
    return math.log10(ratio) if math.isfinite(ratio) else math.inf


def _known(score: float | str | None) -> float:
    """A score to sort by: unknown (None, nan) below every measured one."""
    value = -math.inf if score is None else float(score)
    return -math.inf if math.isnan(value) else value


def _sortable(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _json(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings (as ``explosions.jsonl`` does for norms)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value
