"""Where did the NaN come from? The first non-finite value of a flagged update, found by recomputing it.

At a guard event whose loss, gradient norm or weights are non-finite, the update is computed once more (the event's
chunk, from its hidden state, on the weights it was flagged with where the guard kept them) with hooks on every
module, and the **origin** is the first place a non-finite value shows up, in the order the values were computed:

* **weights**: a parameter was already non-finite (and the module that holds it);
* **input**: the values entering the first module were non-finite: the data, or the hidden state carried in (which
  rows, which steps, and whether the batch itself holds them);
* **forward**: a module's output went non-finite while everything it was given was finite (its own code, not a
  submodule's). For a ``(B, k, H)`` output (a recurrent layer: its hidden state ``h_t``) the first step ``t`` and the
  rows; for an ``nn.LSTM``/``nn.GRU`` layer also the gate block whose pre-activation went non-finite, recomputed from
  ``x_t`` and ``h_{t-1}``. Values born outside every module (in the loss) are named as such;
* **backward**: the forward is finite and a module turns a finite gradient into a non-finite one (``∂L/∂`` its input
  or its parameters), or the loss's own backward does. Inside a recurrent layer, the step where ``∂L/∂h_t`` first goes
  non-finite going back in time (:func:`~seqstab.core.monitor.hidden_state_grads`).

Each origin carries the largest finite magnitude just before (``|h_{t-1}|``, the module's input, the gradient
arriving) and what that says (``kind``): ``overflow`` (values past ``sqrt(float32 max)`` ≈ 1.8e19 before),
``division by zero`` (an ``inf`` from moderate values), ``0/0`` (a ``nan`` from moderate values), ``log of a
non-positive`` (an elementwise op whose input was ``<= 0`` where it went ``-inf``/``nan``), ``non-finite input``,
``non-finite weights``.

Cost: one forward (and, when the forward is finite, one backward) of the chunk, at the event only, with a finiteness
check of each module's inputs and outputs; parameters' ``.grad``, the weights and the RNG state are left as they
were. Between events nothing is paid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from seqstab.core.diagnose.nonfinite import (
    SHOWN_ROWS,
    finite,
    kind_of,
    largest_finite,
    read_flags,
    shape_of,
    values_of,
    where_bad,
    where_text,
)

__all__ = ["GATE_NAMES", "find_origin", "origin_lines", "origin_markdown"]

GATE_NAMES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new")}  # PyTorch's order


@dataclass
class _Seen:
    """One observation, in the order the values were computed: a module entered or left, a gradient computed."""

    what: str  # "enter" | "exit" | "grad_out" | "grad_in" | "param"
    call: int  # index into the calls (-1 for a parameter)
    finite: torch.Tensor  # 0-dim bool, on the device (read back at once, after the pass)
    tensors: list[torch.Tensor] = field(default_factory=list)  # what was checked (detached)
    name: str = ""  # a parameter's name
    key: int = -1  # a gradient's tensor (hooks on one tensor see the same gradient, one after the other)


@dataclass
class _Call:
    """One call of a module during the recompute."""

    name: str  # its path in the model ("" for the model itself)
    module: nn.Module
    parent: int | None  # the enclosing call
    args: tuple = ()
    output: Any = None

    @property
    def label(self) -> str:
        return self.name or f"the model ({type(self.module).__name__})"


def find_origin(
    module: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    layers: list[nn.Module] = (),
    batch: Any = None,
) -> dict[str, Any]:
    """Recompute ``loss_fn()`` (and its gradient) with hooks on every submodule of ``module``; where the first
    non-finite value appeared, as plain values (see the module's docstring; floats may be non-finite). Weights,
    ``.grad`` and the RNG are left as they were.

    Args:
        module: The model (its submodules are hooked; its parameters' names are reported).
        loss_fn: Computes the update's loss from scratch (a seqstab task's ``chunk_loss``; a module's
            ``training_step``).
        layers: The recurrent layers (:func:`seqstab.core.monitor.flow_layers`): the step of ``∂L/∂h_t``.
        batch: What was trained on: tells non-finite data from values born before the first module.
    """
    names = {id(m): name for name, m in module.named_modules()}
    params = list(module.named_parameters())
    bad_weights = _bad_weights(params)
    if bad_weights:
        return _weights_origin(module, bad_weights)
    calls: list[_Call] = []
    seen: list[_Seen] = []
    stack: list[int] = []
    handles = []

    def note(what: str, call: int, grad: torch.Tensor | None, name: str = "", key: int = -1) -> None:
        if grad is not None:
            seen.append(_Seen(what, call, finite(grad), [grad.detach()], name, key))

    def hook(tensor: torch.Tensor, what: str, call: int, name: str = "") -> None:
        key = id(tensor)
        handles.append(tensor.register_hook(lambda g: note(what, call, g, name, key)))

    def enter(m, args, kwargs):
        calls.append(_Call(names.get(id(m), type(m).__name__), m, stack[-1] if stack else None, args))
        stack.append(len(calls) - 1)
        tensors = _floats((args, kwargs))
        seen.append(_Seen("enter", stack[-1], _all_finite(tensors), tensors))

    def leave(m, args, kwargs, output):
        index = stack.pop()
        calls[index].output = output
        tensors = _floats(output)
        seen.append(_Seen("exit", index, _all_finite(tensors), tensors))
        for tensor in _floats(output, requiring_grad=True)[:1]:  # the output itself, not a final state beside it
            hook(tensor, "grad_out", index)
        for tensor in _floats((args, kwargs), requiring_grad=True):
            hook(tensor, "grad_in", index)

    for sub in module.modules():
        handles.append(sub.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(sub.register_forward_hook(leave, with_kwargs=True))
    device = next((p.device for _, p in params), torch.device("cpu"))
    try:
        fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with fork, torch.inference_mode(False), torch.enable_grad():  # a flush at validation runs in inference mode
            loss = loss_fn()
            flags = read_flags([s.finite for s in seen] + [_all_finite([loss.detach()])])
            found = _first_forward(seen, flags[:-1], calls, loss, flags[-1], batch)
            if found is not None:
                return found
            wanted = [(n, p) for n, p in params if p.requires_grad]
            if not loss.requires_grad or not wanted:
                return _not_reproduced("the recomputed loss is finite and has no gradient to follow")
            start = len(seen)
            for name, p in wanted:
                hook(p, "param", -1, name)
            torch.autograd.grad(loss, [p for _, p in wanted], allow_unused=True)  # parameters' .grad untouched
        backward = seen[start:]
        return _first_backward(backward, read_flags([s.finite for s in backward]), calls, layers, module)
    finally:
        for handle in handles:
            handle.remove()


# -- reading what was seen -------------------------------------------------------------------------------------


def _floats(nest: Any, requiring_grad: bool = False) -> list[torch.Tensor]:
    """The floating-point tensors of a nest (args, kwargs, outputs): detached, or those requiring grad as they are."""
    found: list[torch.Tensor] = []
    if isinstance(nest, torch.Tensor):
        if nest.is_floating_point() and (nest.requires_grad or not requiring_grad):
            found.append(nest if requiring_grad else nest.detach())
    elif isinstance(nest, (tuple, list)):
        for item in nest:
            found += _floats(item, requiring_grad)
    elif isinstance(nest, dict):
        for item in nest.values():
            found += _floats(item, requiring_grad)
    return found


def _all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([finite(t).to(tensors[0].device) for t in tensors]).all()


def _bad_weights(params: list[tuple[str, torch.Tensor]]) -> list[str]:
    flags = read_flags([finite(p) for _, p in params])
    return [name for (name, _), ok in zip(params, flags, strict=True) if not ok]


def _owners(module: nn.Module) -> dict[str, str]:
    """Parameter name -> the path of the module that holds it directly."""
    owners = {}
    for name, sub in module.named_modules():
        for leaf, _ in sub.named_parameters(recurse=False):
            owners[f"{name}.{leaf}" if name else leaf] = name
    return owners


# -- the forward -----------------------------------------------------------------------------------------------


def _first_forward(seen, flags, calls, loss, loss_finite, batch) -> dict[str, Any] | None:
    """The origin in the forward pass, or None when every module's inputs and outputs, and the loss, were finite."""
    for item, ok in zip(seen, flags, strict=True):
        if ok:
            continue
        call = calls[item.call]
        if item.what == "exit":
            return _forward_origin(call, item.tensors, "in its own code (no submodule of it)")
        if call.parent is None:
            return _input_origin(call, item.tensors, batch)
        parent = calls[call.parent]  # born in the enclosing module's own code, before it called this one
        return _forward_origin(parent, item.tensors, f"in its own code, before it called {call.label}")
    if loss_finite:
        return None
    largest = largest_finite([t for c in calls if c.parent is None for t in _floats(c.output)])
    values = values_of([loss.detach()])
    kind = kind_of(values, largest)
    evidence = (
        f"forward, in the loss (outside every module): every module's output is finite (largest |value| "
        f"{largest:.3g}) and the loss is {values}: {kind}"
    )
    return {
        "phase": "forward",
        "module": "(loss)",
        "values": values,
        "inputs_finite": True,
        "largest_finite": largest,
        "kind": kind,
        "evidence": evidence,
    }


def _input_origin(call: _Call, tensors: list[torch.Tensor], batch: Any) -> dict[str, Any]:
    """Non-finite values entering the first module called: the data, or the state carried in."""
    flags = read_flags([finite(t) for t in tensors])
    index = flags.index(False)
    tensor = tensors[index]
    what = "its input" if index == 0 else "the hidden state it started from (carried in)"
    in_batch = batch is not None and not all(read_flags([finite(t) for t in _floats(batch)]))
    where = where_bad(tensor, time=tensor.dim() >= 2)
    source = "the batch holds them" if in_batch else "the batch does not: born before the first module was called"
    evidence = (
        f"input: {what} was already non-finite when {call.label} was called ({source}): {where['values']} at "
        f"{where_text(where)} of {shape_of(tensor)}"
    )
    return {
        "phase": "input",
        "module": call.name,
        "module_type": type(call.module).__name__,
        "argument": index,
        "in_batch": in_batch,
        **where,
        "inputs_finite": False,
        "kind": "non-finite input",
        "evidence": evidence,
    }


def _forward_origin(call: _Call, outputs: list[torch.Tensor], code: str) -> dict[str, Any]:
    """A module whose output went non-finite from finite inputs: which step, rows and gate; what kind."""
    inputs = _floats(call.args)
    flags = read_flags([finite(t) for t in outputs])
    tensor = outputs[flags.index(False)]
    timed = tensor.dim() == 3 and bool(inputs) and inputs[0].dim() == 3 and tensor.shape[:2] == inputs[0].shape[:2]
    where = where_bad(tensor, time=timed)
    before = "its input"
    largest = largest_finite(inputs)
    if timed and where.get("step"):
        step = where["step"] - 1
        previous = tensor[:, step - 1] if step > 0 else _start_state(call)
        largest, before = largest_finite([] if previous is None else [previous]), "|h_{t-1}|"
        gate = _gate_at(call, step) if flags.index(False) == 0 else None  # the output itself, not a state
        if gate:
            where["gate"] = gate
    parameter_free = next(call.module.parameters(recurse=False), None) is None  # an activation, a function
    elementwise = [(x, tensor) for x in inputs if x.shape == tensor.shape] if parameter_free else []
    kind = kind_of(where["values"], largest, elementwise[:1])
    gate = f" (the {where['gate']} gate's pre-activation)" if where.get("gate") else ""
    evidence = (
        f"forward, in {_typed(call)} {code}: {where['values']} at {where_text(where)}"
        f"{gate} of {shape_of(tensor)}, from finite inputs; {before} reached {largest:.3g} just before: {kind}"
    )
    return {
        "phase": "forward",
        "module": call.name,
        "module_type": type(call.module).__name__,
        **where,
        "inputs_finite": True,
        "largest_finite": largest,
        "kind": kind,
        "evidence": evidence,
    }


def _typed(call: _Call) -> str:
    """``net.layers.0 (LSTM)``; the model itself as ``the model (SequenceRegressor)``."""
    return f"{call.name} ({type(call.module).__name__})" if call.name else call.label


def _first_output(call: _Call) -> torch.Tensor | None:
    outputs = _floats(call.output)
    return outputs[0] if outputs else None


def _start_state(call: _Call) -> torch.Tensor | None:
    """A recurrent layer's start state ``h_0`` ``(B, H)`` from its call's arguments, if given."""
    if len(call.args) < 2 or call.args[1] is None:
        return None
    state = call.args[1]
    h = state[0] if isinstance(state, (tuple, list)) else state
    return h.detach()[0] if isinstance(h, torch.Tensor) and h.dim() == 3 else None


def _gate_at(call: _Call, step: int) -> str | None:
    """LSTM/GRU: the gate blocks whose pre-activation is non-finite at ``step`` (from ``x_t`` and ``h_{t-1}``), for
    a single-layer, batch-first layer with ``nn.LSTM``'s parameter names (``W_hh`` of 4 blocks: LSTM, 3: GRU).
    PyTorch's fused kernels keep finite inputs finite; a layer of one's own written step by step may not."""
    layer = call.module
    weights = [getattr(layer, name, None) for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    if any(not isinstance(w, torch.Tensor) for w in weights) or getattr(layer, "bidirectional", False):
        return None
    if not getattr(layer, "batch_first", True) or getattr(layer, "num_layers", 1) != 1:
        return None
    out = _first_output(call)
    hidden = weights[1].shape[1]
    cell = {4: "lstm", 3: "gru"}.get(weights[1].shape[0] // hidden)
    if cell is None or out is None or out.shape[-1] != hidden:
        return None
    x = call.args[0].detach()[:, step].float()  # (B, I)
    h = out[:, step - 1] if step > 0 else _start_state(call)
    h = torch.zeros(x.shape[0], hidden, device=x.device) if h is None else h.float()  # (B, H)
    w_ih, w_hh, b_ih, b_hh = (w.detach().float() for w in weights)
    with torch.no_grad():
        gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh  # (B, G·H)
        flags = read_flags([torch.isfinite(block).all() for block in gates.split(hidden, dim=-1)])
    named = [name for name, ok in zip(GATE_NAMES[cell], flags, strict=True) if not ok]
    return ", ".join(named) if named else None


# -- the backward ----------------------------------------------------------------------------------------------


def _first_backward(seen, flags, calls, layers, module) -> dict[str, Any]:
    """The origin in the backward pass (the forward was finite)."""
    arriving = {s.call: s.tensors[0] for s in seen if s.what == "grad_out"}  # ∂L/∂(a call's output)
    owners = _owners(module)
    for at, (item, ok) in enumerate(zip(seen, flags, strict=True)):
        if ok:
            continue
        if item.what == "grad_out":  # a module consuming this tensor made its gradient: name that consumer
            item = next((s for s in seen[at:] if s.key == item.key and s.what == "grad_in"), item)
        if item.what == "grad_out":  # no module consumed it: born in code between modules, or in the loss
            call = calls[item.call]
            parent = calls[call.parent] if call.parent is not None else None
            where = "the loss" if parent is None else f"{parent.label}'s own code"
            code = f"the backward of {where}, reaching the output of {call.label}"
            return _backward_origin(parent, item.tensors[0], None, code, layers)
        if item.what == "grad_in":
            call = calls[item.call]
            return _backward_origin(call, item.tensors[0], arriving.get(item.call), "∂L/∂(its input)", layers)
        owner = owners.get(item.name, "")
        index = max((i for i, c in enumerate(calls) if c.name == owner), default=None)
        call = calls[index] if index is not None else None
        code = f"∂L/∂{item.name.rpartition('.')[2] or item.name}"
        return _backward_origin(call, item.tensors[0], arriving.get(index), code, layers, parameter=True)
    return _not_reproduced("the recomputed loss and its gradient are finite")


def _backward_origin(call, leaving, arriving, code, layers, parameter=False) -> dict[str, Any]:
    """A gradient that went non-finite in ``call``'s backward (None: the loss's), from ``arriving`` (finite)."""
    name = call.name if call is not None else "(loss)"
    label = call.label if call is not None else "the loss"
    type_name = type(call.module).__name__ if call is not None else ""
    largest = largest_finite([arriving]) if arriving is not None else math.nan
    where = {"values": values_of([leaving])} if parameter else where_bad(leaving, time=False)
    recurrent = call is not None and any(call.module is layer for layer in layers)
    if recurrent and arriving is not None and arriving.dim() == 3:
        step = _backward_step(call, arriving)
        if step is not None:
            where.update(step=step[0], steps=step[1])
    elif not parameter and arriving is not None and leaving.dim() == 3 and arriving.shape == leaving.shape:
        where = where_bad(leaving, time=True, last=True)  # backward runs from the last step: its first bad one
    kind = kind_of(where["values"], largest)
    got = f"a finite gradient (largest |g| {largest:.3g})" if arriving is not None else "the gradient"
    at = f" at {where_text(where)}" if where.get("step") or where.get("rows_total") is not None else ""
    where_in = _typed(call) if call is not None else label
    evidence = f"backward, in {where_in}: {code} is {where['values']}{at} from {got}: {kind}"
    return {
        "phase": "backward",
        "module": name,
        "module_type": type_name,
        **where,
        "inputs_finite": True,
        "largest_finite": largest,
        "kind": kind,
        "evidence": evidence,
    }


def _backward_step(call: _Call, arriving: torch.Tensor) -> tuple[int, int] | None:
    """Inside a recurrent layer: the step (1-based) where ``∂L/∂h_t`` first goes non-finite going back in time."""
    from seqstab.core.monitor.flow import hidden_state_grads

    hx = call.args[1] if len(call.args) > 1 else None
    try:
        grads = hidden_state_grads(call.module, call.args[0].detach(), hx, arriving.detach())  # (B, k, H)
    except Exception:  # a layer hidden_state_grads cannot replay: the step stays unknown
        return None
    bad = ~torch.isfinite(grads).flatten(2).all(dim=2).all(dim=0)  # (k,)
    steps = bad.nonzero().flatten().tolist()
    return (steps[-1] + 1, grads.shape[1]) if steps else None


def _weights_origin(module: nn.Module, bad: list[str]) -> dict[str, Any]:
    owner = _owners(module).get(bad[0], "")
    evidence = (
        f"weights: {len(bad)} parameter tensor(s) were already non-finite before the update, first {bad[0]} (in "
        f"{owner or 'the model'}): an earlier update made them so"
    )
    return {
        "phase": "weights",
        "module": owner,
        "parameters": bad[:SHOWN_ROWS],
        "inputs_finite": None,
        "kind": "non-finite weights",
        "evidence": evidence,
    }


def _not_reproduced(why: str) -> dict[str, Any]:
    return {"phase": None, "evidence": f"not reproduced: {why} (recomputed on other weights or dropout masks?)"}


# -- how it reads ------------------------------------------------------------------------------------------------


def origin_lines(origin: dict[str, Any] | None) -> list[str]:
    """The origin as console lines (none without one)."""
    return [f"where: {origin['evidence']}"] if origin else []


def origin_markdown(origin: dict[str, Any] | None) -> str:
    """The origin as a markdown paragraph for TensorBoard's text tab ("" without one)."""
    return f"**where**: {origin['evidence']}\n\n" if origin else ""
