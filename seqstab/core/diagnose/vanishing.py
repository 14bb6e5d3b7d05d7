"""Vanishing gradients: a run that stagnates while the gradient to the chunk's first steps is nothing, diagnosed.

The explosion guard keeps a :class:`VanishingWatch` (its ``vanishing`` setting, :class:`Vanishing`). At every flush it
sees each update's values in order (host floats, already read back: no synchronisation of its own):

* the **monitored loss**: ``train/loss`` of each update, smoothed over a quarter of the window: the loss
  **stagnates** when the mean over the window's last quarter is not ``min_improvement`` (1 %) below the mean over
  its first quarter;
* the **gradient flow**: at each gradient-flow measurement of the monitor (``grad_flow_every_n_steps``),
  ``‖∂L/∂h_1‖ / ‖∂L/∂h_k‖`` of the bottom recurrent layer (``grad_flow/first`` over ``grad_flow/last``; the
  per-step ``grad_flow/growth`` is its ``k-1``-th root): the flow **vanishes** when it is below ``flow_ratio`` (1e-3)
  at every measurement in the window (two at least);
* the saturation tags of the latest measurement (``rnn/saturation/...``, :mod:`seqstab.core.monitor.saturation`).

When both hold, the guard records a **vanishing** finding — once, then again at most every ``every`` updates — in
``findings.jsonl`` (a line: update, epoch, ``evidence``, ``diagnosis``), a TensorBoard text entry
``diagnosis/vanishing`` and the console. It never stops or changes the run. Its diagnosis ranks what can shrink a
gradient over the chunk's ``k`` steps, each scored by the log10 of the attenuation it accounts for (as the explosion
mechanisms are scored by amplification; 1 = tenfold):

==========  ==================================================================================================
mechanism   evidence (score = log10 of)
==========  ==================================================================================================
time        vanilla RNN: ``σ_max(W_hh)`` of the bottom layer below 1 bounds the gradient's shrinking per step back
            (tanh and ReLU have slope at most 1): ``σ_max^-(k-1)``. LSTM / GRU: the memory path keeps the mean
            forget (update) gate of its state per step: ``f^-(k-1)``
saturation  most units or gates at the flat end (``SATURATED_SHARE``: half): tanh units at ``|h| > 0.99``, dead
            ReLUs, LSTM forget / GRU update gates below 0.01; then the slope they leave, compounded: tanh
            ``(1 - 0.98 s)^-(k-1)``, ReLU ``(1 - dead)^-(k-1)``, gated ``f^-(k-1)`` (then not time's)
depth       several layers: ``‖∂L/∂h_k‖`` of the top layer over the bottom layer's
optimizer   how far the weights can move over the window at the recent step size, against 10 % of their norm
            (``lr·‖g‖`` for SGD-like optimizers, ``lr·√P`` for adaptive ones: an upper bound)
==========  ==================================================================================================

Remedies (the seqstab settings where the net is :class:`~seqstab.nets.RecurrentNet`): a gated cell
(``--model.net.cell lstm|gru``), ``--model.net.init orthogonal|identity``, a forget-gate bias of 1
(``--model.net.forget_bias 1``, Jozefowicz et al. 2015), ``--model.net.nonlinearity relu``, layer normalisation, and
for the optimizer a larger learning rate.

The test misreads a model that has learned all it needs from the recent steps (a converged model with no use for
long memory): the finding says what it measured, the task decides whether long memory is needed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from seqstab.core.diagnose.findings import rank, ranked_lines, ranked_rows, times
from seqstab.core.diagnose.vanishing_findings import findings
from seqstab.core.errors import ConfigError
from seqstab.core.logs import add_text
from seqstab.core.plain import json_safe

__all__ = ["FINDINGS_FILE", "Vanishing", "VanishingWatch", "record_finding", "vanishing_lines"]

FINDINGS_FILE = "findings.jsonl"


@dataclass(frozen=True)
class Vanishing:
    """When the explosion guard calls a run's gradients vanishing (:mod:`seqstab.core.diagnose.vanishing`).

    Args:
        window: Updates over which the training loss must improve, and the gradient flow is judged.
        min_improvement: The fraction by which the training loss (smoothed over a quarter of the window) must fall
            over the window; less is stagnation.
        flow_ratio: ``‖∂L/∂h_1‖ / ‖∂L/∂h_k‖`` of the bottom recurrent layer below which the flow to the chunk's first
            steps counts as vanished (at every gradient-flow measurement in the window, two at least).
        every: After a finding, the next one comes at least this many updates later.
    """

    window: int = 200
    min_improvement: float = 0.01
    flow_ratio: float = 1e-3
    every: int = 1000

    def __post_init__(self) -> None:
        if not (isinstance(self.window, int) and self.window >= 8):
            raise ConfigError(f"guard vanishing.window={self.window!r}: must be an integer >= 8")
        if not 0 <= self.min_improvement < 1:
            raise ConfigError(f"guard vanishing.min_improvement={self.min_improvement!r}: must be in [0, 1)")
        if not 0 < self.flow_ratio < 1:
            raise ConfigError(f"guard vanishing.flow_ratio={self.flow_ratio!r}: must be in (0, 1)")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ConfigError(f"guard vanishing.every={self.every!r}: must be an integer >= 1")

    def as_dict(self) -> dict[str, Any]:
        """Plain values (how the run's hyperparameters list it)."""
        return asdict(self)


class VanishingWatch:
    """What the vanishing test needs from the updates before, kept on the host in O(1) per update.

    Args:
        settings: The test's settings.
    """

    def __init__(self, settings: Vanishing):
        self.settings = settings
        self.losses: deque[tuple[int, float]] = deque(maxlen=settings.window)  # (update, train/loss), finite
        self.flows: deque[tuple[int, float, int]] = deque(maxlen=settings.window)  # (update, first/last, steps)
        self.steps: deque[float] = deque(maxlen=settings.window)  # lr × post-clip norm of applied updates
        self.saturation: dict[str, float] = {}  # the latest rnn/saturation/* values
        self.flow: dict[str, float] = {}  # the latest grad_flow/* values (every layer)
        self.last_finding: int | None = None
        self.findings = 0
        self._previous: Any = None  # the update before: its flow summaries join its values after it is settled

    def observe(self, run: Any, update: Any, read: dict[str, Any], applied: bool) -> dict[str, Any] | None:
        """At the flush, for each update in order (``read``: what the host knew at it, ``lr`` among it); records and
        returns a finding when the test holds."""
        previous, self._previous = self._previous, update
        if previous is not None:  # the monitor wrote its flow summaries after the guard settled it
            self._take_flow(previous)
        values = update.values
        loss = values.get("train/loss")
        if isinstance(loss, float) and math.isfinite(loss):
            self.losses.append((update.step, loss))
        saturation = {k: v for k, v in values.items() if k.startswith("rnn/saturation/")}
        if saturation:
            self.saturation = saturation
        lr, post = read.get("lr"), values.get("grad/norm_total_clipped")
        if applied and lr is not None and post is not None and math.isfinite(post):
            self.steps.append(lr * post)
        evidence = self._test(update.step)
        if evidence is None:
            return None
        self.last_finding, self.findings = update.step, self.findings + 1
        if not getattr(run, "is_global_zero", True):  # every rank keeps the same count; rank 0 measures and writes
            return None
        finding = {
            "update": update.step,
            "global_step": read.get("global_step", getattr(run, "global_step", 0)),
            "epoch": read.get("epoch", getattr(run, "epoch", 0)),
            "finding": "vanishing",
            "evidence": evidence,
            "diagnosis": self.diagnose(run, lr),
        }
        record_finding(run, json_safe(finding))
        return finding

    def _take_flow(self, update: Any) -> None:
        taken = _flow_of(update)
        if taken is not None:
            self.flows.append(taken[0])
            self.flow = taken[1]

    def _test(self, step: int) -> str | None:
        """The finding's first line when the loss stagnates while the flow has vanished; None otherwise. O(1) while
        the latest flow measurement is healthy."""
        settings = self.settings
        if not self.flows or self.flows[-1][1] >= settings.flow_ratio or len(self.losses) < settings.window:
            return None
        if self.last_finding is not None and step - self.last_finding < settings.every:
            return None
        start = self.losses[0][0]
        flows = [f for f in self.flows if f[0] >= start]
        if len(flows) < 2 or any(ratio >= settings.flow_ratio for _, ratio, _ in flows):
            return None
        quarter = max(1, settings.window // 4)
        losses = [loss for _, loss in self.losses]
        before, now = statistics.fmean(losses[:quarter]), statistics.fmean(losses[-quarter:])
        if not before > 0:
            return None
        improvement = (before - now) / before
        if improvement >= settings.min_improvement:
            return None
        _, ratio, steps = flows[-1]
        if ratio > 0 and steps > 1:
            latest = f"latest {ratio:.3g}: {ratio ** (1 / (steps - 1)):.3g}x per step back over the {steps}-step chunk"
        else:
            latest = f"latest: nothing reaches the first of the chunk's {steps} steps"
        change = f"{'fell' if improvement >= 0 else 'rose'} {100 * abs(improvement):.2g}%"
        return (
            f"the training loss {change} over the last {settings.window} updates (mean {before:.4g} -> {now:.4g}; "
            f"asked: {100 * settings.min_improvement:g}%) while ‖∂L/∂h_1‖ stayed below {settings.flow_ratio:g} of "
            f"‖∂L/∂h_k‖ at all {len(flows)} gradient-flow measurements ({latest})"
        )

    # -- the diagnosis -------------------------------------------------------------------------------------------

    def diagnose(self, run: Any, lr: float | None) -> dict[str, Any]:
        """The mechanisms ranked (the module's table), with the remedies for the run's net and optimizer."""
        steps = self.flows[-1][2] if self.flows else 0
        return rank(findings(run, steps, self.saturation, self.flow, list(self.steps), self.settings.window, lr))

    # -- checkpoint ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain values, lists and numbers only (a ``weights_only`` checkpoint). The last update's flow summaries,
        written after it was settled, are in it (a resumed watch has no last update to take them from)."""
        flows, flow = list(self.flows), self.flow
        taken = _flow_of(self._previous) if self._previous is not None else None
        if taken is not None:
            flows, flow = (flows + [taken[0]])[-self.settings.window :], taken[1]
        return {
            "losses": [list(item) for item in self.losses],
            "flows": [list(item) for item in flows],
            "steps": list(self.steps),
            "saturation": [[k, v] for k, v in self.saturation.items()],
            "flow": [[k, v] for k, v in flow.items()],
            "last_finding": self.last_finding,
            "findings": self.findings,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend((int(s), float(v)) for s, v in state.get("losses", []))
        self.flows.clear()
        self.flows.extend((int(s), float(r), int(k)) for s, r, k in state.get("flows", []))
        self.steps.clear()
        self.steps.extend(float(v) for v in state.get("steps", []))
        self.saturation = {str(k): float(v) for k, v in state.get("saturation", [])}
        self.flow = {str(k): float(v) for k, v in state.get("flow", [])}
        self.last_finding = state.get("last_finding")
        self.findings = int(state.get("findings", 0))
        self._previous = None


def _flow_of(update: Any) -> tuple[tuple[int, float, int], dict[str, float]] | None:
    """``((update, first/last, steps), grad_flow/* values)`` of an update the monitor measured the flow at."""
    values = update.values
    first, last, steps = values.get("grad_flow/first"), values.get("grad_flow/last"), values.get("grad_flow/steps")
    if first is None or last is None or not last > 0 or not math.isfinite(first):
        return None
    return (update.step, first / last, int(steps or 0)), {k: v for k, v in values.items() if k.startswith("grad_flow/")}


def record_finding(run: Any, finding: dict[str, Any]) -> None:
    """The finding's line in ``findings.jsonl``, its TensorBoard text entry and its console lines (rank 0)."""
    if not getattr(run, "is_global_zero", True):
        return
    run_dir = getattr(run, "run_dir", None)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / FINDINGS_FILE, "a") as f:
            f.write(json.dumps(finding) + "\n")
    add_text(run, "diagnosis/vanishing", _markdown(finding), finding["update"])
    print("\n".join(f"seqstab: {line}" for line in vanishing_lines(finding)), flush=True)


def vanishing_lines(finding: dict[str, Any]) -> list[str]:
    """A finding as console lines: what was seen, then each mechanism with its score, evidence and remedies."""
    diagnosis = finding["diagnosis"]
    top = diagnosis.get("top")
    lines = [
        f"vanishing gradients at update {finding['update']} (epoch {finding['epoch']}): {finding['evidence']}; "
        "the run goes on",
        f"why: {top} ({times(diagnosis['ranked'][0]['score'])} attenuation over the chunk)"
        if top
        else "why: no mechanism stands out (none accounts for a tenfold attenuation)",
    ]
    return lines + ranked_lines(diagnosis["ranked"], width=10)


def _markdown(finding: dict[str, Any]) -> str:
    diagnosis = finding["diagnosis"]
    rows = ranked_rows(diagnosis["ranked"], "attenuation")
    head = f"**vanishing gradients**: {finding['evidence']}\n\n**why**: {diagnosis.get('top') or 'no mechanism'}"
    return head + "\n\n" + "\n".join(rows)
