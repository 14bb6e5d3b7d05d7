"""The mechanisms of a vanishing gradient, each measured at a finding and scored by the log10 of the attenuation over
the chunk it accounts for (see :mod:`seqstab.core.diagnose.vanishing`), with the settings to try."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from seqstab.core.diagnose.findings import Finding, times
from seqstab.core.diagnose.tracker import optimizer_path

REACH = 0.1  # how far (a fraction of ‖θ‖) the weights should be able to move over a window: less is slow
ADAPTIVE = ("exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf")  # optimizer state of per-coordinate steps
LAYER0 = "rnn/saturation/layer_0/"
SATURATED_SHARE = 0.5  # saturation counts where at least this share of the units (or gates) is at the flat end


def findings(
    run: Any,
    steps: int,
    saturation: dict[str, float],
    flow: dict[str, float],
    step_sizes: list[float],
    window: int,
    lr: float | None,
) -> list[Finding]:
    """Time, saturation, depth and optimizer for the run's net (``steps``: the chunk's length ``k``)."""
    net = getattr(run, "net", None)
    shape = _shape(net)
    got = {k.removeprefix(LAYER0): v for k, v in saturation.items() if k.startswith(LAYER0)}
    return [
        _time(net, steps, shape, got),
        _saturation(got, steps, shape),
        _depth(flow, shape),
        _optimizer(run, step_sizes, window, lr),
    ]


def _shape(net: Any) -> dict[str, Any] | None:
    """Cell, nonlinearity and layers of a :class:`~seqstab.nets.RecurrentNet` (whose settings the remedies name);
    None for another net."""
    from seqstab.nets.recurrent import RecurrentNet

    if not isinstance(net, RecurrentNet):
        return None
    return {"cell": net.cell, "nonlinearity": net.nonlinearity, "layers": net.num_layers}


def _chunk(value: float, steps: int) -> float | None:
    """log10 of ``1 / value`` compounded over ``steps - 1`` steps back (None without two steps)."""
    if steps < 2:
        return None
    if value <= 0:
        return math.inf
    return (steps - 1) * math.log10(1 / value)


def _time(net: Any, steps: int, shape: dict[str, Any] | None, got: dict[str, float]) -> Finding:
    """Vanilla RNN: ``σ_max(W_hh)``; a gated cell: its memory path's factor per step (the mean forget gate of an
    LSTM, the mean update gate of a GRU), unless those gates are saturated closed (then it is saturation)."""
    from seqstab.core.monitor.contract import spectral_weights

    weights = spectral_weights(net) if net is not None else []
    if not weights:
        return Finding("time", None, "the net offers no recurrent weights to measure (recurrent_weights())")
    weight, cell = weights[0]
    if cell != "rnn":
        return _memory_path(cell, steps, shape, got)
    sigma = float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))  # one read, at a finding
    if sigma >= 1:
        text = f"σ_max(W_hh) of the bottom layer is {sigma:.3g} >= 1: the recurrent weights alone shrink nothing"
        return Finding("time", 0.0, text)
    score = _chunk(sigma, steps)
    text = (
        f"σ_max(W_hh) of the bottom layer is {sigma:.3g}: the gradient shrinks at least {1 / sigma:.3g}x per step "
        f"back (slope <= 1), {times(score)} over the {steps}-step chunk"
    )
    if shape is not None:
        tips = ["--model.net.init orthogonal", "--model.net.cell lstm --model.net.forget_bias 1"]
        tips.append("--model.net.cell gru")
        if shape["nonlinearity"] != "relu":
            tips.insert(1, "--model.net.nonlinearity relu --model.net.init identity")
    else:
        tips = ["orthogonal or identity initialisation of W_hh", "a gated cell (LSTM with a forget-gate bias of 1)"]
    return Finding("time", score, text, tips)


def _memory_path(cell: str, steps: int, shape: dict[str, Any] | None, got: dict[str, float]) -> Finding:
    gate = "forget" if cell == "lstm" else "update"
    if f"{gate}_mean" not in got:
        return Finding("time", None, f"{cell}: its {gate} gates were not measured (GradMonitor saturation)")
    mean, closed = got[f"{gate}_mean"], got.get(f"{gate}_low", 0.0)
    if closed >= SATURATED_SHARE:
        return Finding("time", None, f"{cell}: its memory path is cut by saturated {gate} gates (saturation)")
    score = _chunk(mean, steps)
    text = (
        f"the {cell}'s memory path keeps {mean:.3g} of its state per step (the mean {gate} gate), "
        f"{times(score)} over the {steps}-step chunk"
    )
    return Finding("time", score, text, _gate_tips(cell, shape))


def _gate_tips(cell: str, shape: dict[str, Any] | None) -> list[str]:
    if cell == "lstm":
        return ["--model.net.forget_bias 1"] if shape is not None else ["a forget-gate bias of 1 (Jozefowicz 2015)"]
    return ["--model.net.cell lstm --model.net.forget_bias 1"] if shape is not None else ["an LSTM, forget bias 1"]


def _saturation(got: dict[str, float], steps: int, shape: dict[str, Any] | None) -> Finding:
    """The share of units or gates at the flat end; counted when it is most of them (``SATURATED_SHARE``), scored
    by the slope they leave per step, compounded over the chunk."""
    own = shape is not None
    if "tanh" in got:
        share, slope = got["tanh"], got.get("tanh_slope", math.nan)
        what = f"{100 * share:.3g}% of the tanh units at |h| > 0.99 (slope below 0.02), mean slope {slope:.3g}"
        tips = ["--model.net.cell lstm --model.net.forget_bias 1", "--model.net.nonlinearity relu --model.net.init "
                "identity", _layer_norm(shape), "--model.net.init orthogonal"] if own else [  # fmt: skip
            "a gated cell (LSTM with a forget-gate bias of 1)", "ReLU units with identity initialisation (IRNN)",
            "layer normalisation"]  # fmt: skip
        return _counted(share, 1 - 0.98 * share, steps, what, tips)
    if "dead" in got:
        dead = got["dead"]
        what = f"{100 * dead:.3g}% of the ReLU units dead (0 at every step and row of the chunk)"
        tips = ["--model.net.init identity", "--model.net.cell lstm --model.net.forget_bias 1"] if own else [
            "identity initialisation of W_hh (IRNN)", "a smaller learning rate"]  # fmt: skip
        return _counted(dead, 1 - dead, steps, what, tips)
    for gate, cell in (("forget", "lstm"), ("update", "gru")):
        if f"{gate}_mean" in got:
            closed, mean = got.get(f"{gate}_low", 0.0), got[f"{gate}_mean"]
            what = (
                f"{100 * closed:.3g}% of the {gate} gates below 0.01 (the state cleared at every step), "
                f"{100 * got.get(f'{gate}_high', 0.0):.3g}% above 0.99, mean {mean:.3g}"
            )
            others = [g for g in ("input", "output", "reset") if f"{g}_low" in got]
            what += "".join(f"; {g} gates {100 * got[f'{g}_low']:.3g}% below 0.01" for g in others)
            return _counted(closed, mean, steps, what, _gate_tips(cell, shape))
    return Finding("saturation", None, "not measured (GradMonitor saturation, with the gradient flow)")


def _counted(share: float, factor: float, steps: int, what: str, tips: list[str]) -> Finding:
    if share < SATURATED_SHARE:
        return Finding("saturation", 0.0, f"not saturated: {what}", tips)
    return Finding("saturation", _chunk(factor, steps), f"saturated: {what}", tips)


def _layer_norm(shape: dict[str, Any]) -> str:
    if shape["layers"] > 1:
        return "--model.net.layer_norm true"
    return "layer normalisation inside the cell (RecurrentNet's layer_norm acts between layers)"


def _depth(flow: dict[str, float], shape: dict[str, Any] | None) -> Finding:
    layers = sorted(int(k.rpartition("_")[2]) for k in flow if k.startswith("grad_flow/last/layer_"))
    if len(layers) < 2:
        return Finding("depth", None, "one recurrent layer: no depth to shrink through")
    top, bottom = flow[f"grad_flow/last/layer_{layers[-1]}"], flow["grad_flow/last/layer_0"]
    if not top > 0:
        return Finding("depth", None, "no gradient at the top layer's last step")
    ratio = top / bottom if bottom > 0 else math.inf
    text = f"at the chunk's last step ‖∂L/∂h‖ of the bottom layer is {1 / ratio:.3g} of the top layer's"
    tips = ["--model.net.residual true", "--model.net.layer_norm true"] if shape else [
        "residual connections or normalisation between layers"]  # fmt: skip
    if shape is not None and shape["layers"] > 2:
        tips.append(f"--model.net.num_layers {shape['layers'] // 2}")
    return Finding("depth", math.log10(ratio) if math.isfinite(ratio) else math.inf, text, tips)


def _optimizer(run: Any, step_sizes: list[float], window: int, lr: float | None) -> Finding:
    optimizer = getattr(run, "optimizer", None)
    inner = getattr(optimizer, "optimizer", optimizer)
    params = [p for p in run.module.parameters() if p.requires_grad]
    if inner is None or lr is None or not params:
        return Finding("optimizer", None, "no optimizer's step to measure")
    theta = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().double())
                                                        for p in params])))  # fmt: skip
    adaptive = any(key in state for state in inner.state.values() for key in ADAPTIVE)
    if adaptive:
        step, how = lr * math.sqrt(sum(p.numel() for p in params)), "lr·√P, per-coordinate steps"
    elif step_sizes:
        step, how = statistics.median(step_sizes), "lr·‖g‖, median"
    else:
        return Finding("optimizer", None, "no applied update to measure")
    reach = window * step / theta if theta > 0 else math.inf
    score = math.log10(REACH / reach) if reach > 0 else math.inf
    text = (
        f"at the recent step size ({how} = {step:.3g}) the weights (‖θ‖ = {theta:.3g}) can move at most "
        f"{reach:.3g} of their norm over {window} updates"
    )
    path = optimizer_path(optimizer)
    return Finding("optimizer", score, text, [f"--optimizer {path} --optimizer.lr {lr * 10:g}"])
