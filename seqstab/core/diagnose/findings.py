"""The four mechanisms measured at an event (growth through time, through depth, the optimizer's step, the data),
each a :class:`Finding` scored by the amplification it measured, and their ranking."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstab.core.diagnose.remedies import Remedies
from seqstab.core.diagnose.tracker import Tracker
from seqstab.core.plain import json_safe, map_tensors, sortable

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


def optimizer_finding(tracker: Tracker, module: nn.Module, remedies: Remedies) -> Finding:
    """The last applied update's relative step for the tensor it moved most, against that tensor's recent median."""
    if not tracker.steps:
        return Finding("optimizer", None, "no update was applied before this one", [])
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    fitting = [n for _, n, _ in tracker.steps if n is not None and len(n) == len(named)]
    read = torch.cat(  # one host read, at an event: the weights' norms and the recent per-tensor gradient norms
        [torch.stack([torch.linalg.vector_norm(p.detach().double()) for _, p in named])]
        + [n.detach().double().to(named[0][1].device) for n in fitting]
    ).tolist()
    weights, kept = read[: len(named)], iter(read[len(named) :])
    rows = []  # per applied update: each tensor's step lr * s * ‖g_i‖
    total = math.sqrt(sum(w * w for w in weights)) or 1.0
    for scale, norms, step in tracker.steps:
        if norms is not None and len(norms) == len(named):
            rows.append([scale * next(kept) for _ in range(len(named))])
        else:  # no per-tensor norms: the global step lr * ‖g‖, as if spread by weight
            rows.append([step * w / total for w in weights])
    last = rows[-1]
    rel = [s / w if w > 0 else math.inf for s, w in zip(last, weights, strict=True)]
    worst = max(range(len(rel)), key=lambda i: sortable(rel[i]))
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


def flow_profile(net: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> np.ndarray | None:
    """``(L, k)``: ``‖∂L/∂h_t‖`` (float64) per recurrent layer (bottom first) and step of the chunk, through the
    recurrence, from one more forward (``loss_fn``) and backward; parameters' ``.grad`` and the RNG stay as they
    were. None when the net offers no recurrent layers (:func:`seqstab.monitor.flow_layers`)."""
    from seqstab.core.monitor import flow_layers, hidden_state_grads

    layers = flow_layers(net)
    if not layers:
        return None
    seen: list[tuple[torch.Tensor, Any, torch.Tensor] | None] = [None] * len(layers)

    def keep(i, module, args, output):
        seen[i] = (args[0].detach(), map_tensors(torch.Tensor.detach, args[1] if len(args) > 1 else None), output[0])

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


def _log10(ratio: float) -> float:
    if math.isnan(ratio):
        return math.nan
    if ratio <= 0:
        return -math.inf
    return math.log10(ratio) if math.isfinite(ratio) else math.inf


def rank(findings: list[Finding]) -> dict[str, Any]:
    """``{"top": mechanism or None, "ranked": [finding as a dict, ...]}``, highest score first (None last)."""
    ranked = sorted(findings, key=lambda f: _known(f.score), reverse=True)
    top = ranked[0].mechanism if ranked and _known(ranked[0].score) >= IMPLICATED else None
    return {"top": top, "ranked": [json_safe(asdict(f)) for f in ranked]}


def _known(score: float | str | None) -> float:
    """A score to sort by: unknown (None, nan) below every measured one."""
    value = -math.inf if score is None else float(score)
    return -math.inf if math.isnan(value) else value


def times(score: float | str | None) -> str:
    """A log10 score as a factor for people: ``10^4.0`` from 3 decades on, ``12.3x`` below, ``n/a`` unknown."""
    value = _known(score)
    if value == -math.inf:
        return "n/a"
    if value == math.inf:
        return "inf"
    return f"10^{value:.1f}" if abs(value) >= 3 else f"{10**value:.3g}x"


def ranked_lines(ranked: list[dict[str, Any]], width: int) -> list[str]:
    """Ranked findings as console lines: each mechanism (padded to ``width``), its factor and evidence, then the
    remedies of an implicated one."""
    lines = []
    for i, f in enumerate(ranked, 1):
        lines.append(f"  {i}. {f['mechanism']:<{width}} {times(f['score']):>10}  {f['evidence']}")
        if f["remedies"] and f["score"] is not None and float(f["score"]) >= IMPLICATED:
            lines.append(f"     try: {'; '.join(f['remedies'])}")
    return lines


def ranked_rows(ranked: list[dict[str, Any]], factor: str) -> list[str]:
    """Ranked findings as a Markdown table, the factor's column named ``factor``."""
    rows = [f"| rank | mechanism | {factor} | evidence | try |", "|---|---|---|---|---|"]
    for i, f in enumerate(ranked, 1):
        tips = "; ".join(f"`{t}`" for t in f["remedies"])
        rows.append(f"| {i} | {f['mechanism']} | {times(f['score'])} | {f['evidence']} | {tips} |")
    return rows
