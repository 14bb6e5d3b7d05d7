"""Truncated backpropagation through time: truncation policies, how a batch becomes windows, where the graph is cut.

A truncation policy (``model.truncation``, by class path like ``model.clipping``; ``model.tbptt_steps: k`` is the
shorthand for ``Fixed(k)``) turns a batch of ``L`` steps into :class:`Window` s. Each window is one update: its
forward starts from the (detached) hidden state at ``start``, its loss counts the steps ``[score_from, stop)``,
and its backward reaches back to ``start``::

    batch  x, y, mask: (B, L, ...)                                    ✂ = graph cut (the state enters detached)

    Full                 ✂[════════════════════════ 0 … L-1 ════════════════════════]▲           one update
    Fixed(k)             ✂[═══ k ═══]▲✂[═══ k ═══]▲✂[═══ k ═══]▲✂[═ rest ═]▲                    chunks of LENGTH k
    Overlapping(k1, k2)  ✂[═ k1 ═]▲
                         ✂[── k2-k1 ──╫═ k1 ═]▲                          update every k1 steps,
                                ✂[── k2-k1 ──╫═ k1 ═]▲                   backward reaching k2 steps:
                                       ✂[── k2-k1 ──╫═ k1 ═]▲            every scored step sees >= k2-k1 of history
    VariableLength(k, σ) ✂[══ 68 ══]▲✂[═ 31 ═]▲✂[═══ 73 ═══]▲✂[ … ]▲   lengths ~ N(k or k/2, σ); lr × length / k
    Unbiased(c)          ✂[══╪══╪══╪═]▲✂[═╪═]▲✂[══╪══╪══╪══╪═]▲           cut at each candidate step with
                                                                         probability c; where not cut (╪) the
                                                                         gradient through h is × 1/(1-c)

    ═ scored step (in the loss)   ── unscored history (forward and backward, no loss)   ▲ update (step | skip)

    per window:  advance h to `start` (no grad, only where windows overlap or are skipped) ─► forward from
                 h(start) ─► loss of [score_from, stop) ─► backward ─► update ─► h(stop) detached, if the next
                 window starts there

    stateful data (batch i+1 continues batch i's B streams): h(L) survives to the next batch, detached (no
                   window's backward crosses a batch boundary), reset to zeros at each epoch start and before
                   validation/test; stateless data: every batch starts from zeros.

Windows of ``Fixed`` and ``Full`` are exactly today's chunks (``torch.split`` views: chunks of LENGTH k, not k
pieces as ``tensor_split`` and Lightning's old docs), so their numbers are unchanged bitwise. Random policies draw
from their own ``torch.Generator`` (seeded alike on every DDP rank, saved in the checkpoint): every rank makes the
same cuts, and a resumed run draws the lengths the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from seqstab.core.errors import ConfigError
from seqstab.nets.recurrent import Hidden

LOSS_WEIGHT = "loss_weight"  # key of a window chunk: 0-dim multiplier of its loss (Unbiased: its share of the batch)
GRAD_SCALE = "bptt_scale"  # key of a window chunk: (n,) factor on the gradient into h_{t-1} from step t (Unbiased)


@dataclass(frozen=True)
class Window:
    """One update of a truncation policy, in steps of the batch.

    Attributes:
        start: The forward (and so the backward) starts here, from the hidden state detached.
        stop: One past the last step; the update happens after it.
        score_from: The first step whose loss counts (``start <= score_from < stop``); the steps before it are
            history the backward reaches through without scoring them.
        lr_scale: Learning-rate multiplier for this update (``VariableLength``: length / k).
        share: Weight the window's loss by its share of the batch's loss (``Unbiased``), so that the gradients of a
            batch's windows add up to an estimate of the batch's full-BPTT gradient.
        compensate: ``(t, factor)``: the gradient flowing from step ``t`` back into the state after step ``t - 1``
            is multiplied by ``factor`` (``Unbiased``: 1 / (1 - c) where a cut could have been and was not).
    """

    start: int
    stop: int
    score_from: int
    lr_scale: float = 1.0
    share: bool = False
    compensate: tuple[tuple[int, float], ...] = ()


class TruncationPolicy:
    """Base class of truncation policies: :meth:`windows` cuts a batch of ``length`` steps. Random policies also
    implement :meth:`state_dict`/:meth:`load_state_dict` (their generator), which travel in the checkpoint."""

    def windows(self, length: int) -> list[Window]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Drawn(TruncationPolicy):
    """A policy that draws its cuts from its own generator (seeded by ``seed``, else ``torch.initial_seed()`` when
    built: ``seed_everything``'s seed under the CLI, the same on every DDP rank); the generator's state travels in
    the checkpoint, so a resumed run draws what the uninterrupted one would."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed if seed is not None else torch.initial_seed())

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


class Full(TruncationPolicy):
    """Full BPTT: one update per batch, the backward through all of it."""

    def windows(self, length: int) -> list[Window]:
        return [Window(0, length, 0)]


class Fixed(TruncationPolicy):
    """Truncated BPTT with chunks of length ``k`` (``model.tbptt_steps: k``): an update every ``k`` steps, the
    backward reaching the chunk's start, so the first step of a chunk sees no history (Williams & Peng 1990, k1 = k2).

    Args:
        k: Chunk length.
    """

    def __init__(self, k: int):
        _check_steps(k=k)
        self.k = k

    def windows(self, length: int) -> list[Window]:
        return [Window(a, min(a + self.k, length), a) for a in range(0, length, self.k)]


class Overlapping(TruncationPolicy):
    """TBPTT(k1, k2) (Williams & Peng 1990; Sutskever 2013): an update every ``k1`` steps, its backward reaching ``k2``
    steps back from the update, so every scored step sees at least ``k2 - k1`` steps of history. The loss of a window
    counts its last ``k1`` steps only; the hidden state entering it is recomputed without a graph.

    Args:
        k1: Steps between updates (each scored once).
        k2: Steps the backward reaches back from an update (``k2 >= k1``; ``k2 = k1`` is ``Fixed(k1)``): the ``k1``
            scored steps and ``k2 - k1`` before them (fewer at the batch's start; a last, shorter window keeps the
            ``k2 - k1``).
    """

    def __init__(self, k1: int, k2: int):
        _check_steps(k1=k1, k2=k2)
        if k2 < k1:
            raise ConfigError(f"Overlapping(k1={k1}, k2={k2}): k2 must be >= k1")
        self.k1, self.k2 = k1, k2

    def windows(self, length: int) -> list[Window]:
        out = []
        for a in range(0, length, self.k1):
            stop = min(a + self.k1, length)
            out.append(Window(max(0, a - (self.k2 - self.k1)), stop, a))
        return out


class VariableLength(_Drawn):
    """AWD-LSTM's variable-length truncation (Merity, Keskar & Socher 2017): each window's length is drawn from
    ``N(k, sigma)`` (with probability ``p_half`` from ``N(k/2, sigma)``), floored at ``min_len``, so chunk boundaries
    do not fall on the same tokens every epoch; the learning rate of its update is scaled by length / k. A batch is
    cut into consecutive draws (the last one cut short at the batch's end).

    Args:
        k: Mean window length (AWD-LSTM: 70).
        sigma: Standard deviation of the length (AWD-LSTM: 5).
        p_half: Probability of drawing around ``k / 2`` instead (AWD-LSTM: 0.05).
        min_len: Shortest drawn length (AWD-LSTM: 5).
        max_len: Longest drawn length; None: no cap (later AWD-LSTM versions cap at k + 40).
        scale_lr: Scale the update's learning rate by length / k (AWD-LSTM does).
        seed: Seed of the policy's own generator; None: ``torch.initial_seed()`` when built (``seed_everything``'s
            seed under the CLI, the same on every DDP rank).
    """

    def __init__(
        self,
        k: int = 70,
        sigma: float = 5.0,
        p_half: float = 0.05,
        min_len: int = 5,
        max_len: int | None = None,
        scale_lr: bool = True,
        seed: int | None = None,
    ):
        _check_steps(k=k, min_len=min_len, max_len=max_len)
        if not sigma >= 0:
            raise ConfigError(f"VariableLength(sigma={sigma!r}): must be >= 0")
        if not 0 <= p_half <= 1:
            raise ConfigError(f"VariableLength(p_half={p_half!r}): must be in [0, 1]")
        if max_len is not None and max_len < min_len:
            raise ConfigError(f"VariableLength(max_len={max_len}): must be >= min_len={min_len}")
        super().__init__(seed)
        self.k, self.sigma, self.p_half, self.min_len, self.max_len = k, sigma, p_half, min_len, max_len
        self.scale_lr = scale_lr

    def draw(self) -> int:
        """One window length, as AWD-LSTM draws it."""
        mean = self.k / 2 if torch.rand((), generator=self.generator).item() < self.p_half else self.k
        length = max(self.min_len, int(mean + self.sigma * torch.randn((), generator=self.generator).item()))
        return length if self.max_len is None else min(length, self.max_len)

    def windows(self, length: int) -> list[Window]:
        out, a = [], 0
        while a < length:
            stop = min(a + self.draw(), length)
            out.append(Window(a, stop, a, lr_scale=(stop - a) / self.k if self.scale_lr else 1.0))
            a = stop
        return out


class Unbiased(_Drawn):
    """Anticipated Reweighted Truncated Backpropagation, ARTBP (Tallec & Ollivier 2017): at each candidate step the
    backward is cut with probability ``c``; where it is not, the gradient flowing back through the hidden state is
    multiplied by the compensation factor ``1 / (1 - c)``. A path of the full-BPTT gradient that crosses ``n``
    candidate steps survives with probability ``(1 - c)^n`` and is weighted by ``(1 - c)^-n``, so each window's loss
    weighted by its share of the batch's loss gives gradients whose sum over the batch's windows is, in expectation
    over the cuts, the batch's full-BPTT gradient. The price is variance: long windows carry large factors.

    This is the paper's rule with a constant truncation probability ``c_t = c`` (its experiments also let ``c_t``
    depend on the time since the last cut; not implemented).

    Args:
        c: Probability of a cut at each candidate step (mean window length ``stride / c``).
        stride: Candidate steps every ``stride`` steps (1: every step; a larger stride runs the net in fewer, longer
            pieces between the compensation points).
        seed: Seed of the policy's own generator; None: ``torch.initial_seed()`` when built.
    """

    def __init__(self, c: float = 0.1, stride: int = 1, seed: int | None = None):
        if not 0 < c < 1:
            raise ConfigError(f"Unbiased(c={c!r}): must be in (0, 1)")
        _check_steps(stride=stride)
        super().__init__(seed)
        self.c, self.stride = c, stride

    def windows(self, length: int) -> list[Window]:
        points = list(range(self.stride, length, self.stride))
        cuts = (torch.rand(len(points), generator=self.generator) < self.c).tolist()
        out, a, kept = [], 0, []
        factor = 1.0 / (1.0 - self.c)
        for t, cut in zip(points, cuts, strict=True):
            if cut:
                out.append(Window(a, t, a, share=True, compensate=tuple(kept)))
                a, kept = t, []
            else:
                kept.append((t, factor))
        out.append(Window(a, length, a, share=True, compensate=tuple(kept)))
        return out


def _check_steps(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r}: must be an integer >= 1")


def policy_of(tbptt_steps: int | None, truncation: TruncationPolicy | None) -> TruncationPolicy:
    """The policy a task trains with: ``truncation``, or the shorthand ``tbptt_steps: k`` (``Fixed(k)``), or Full."""
    if truncation is not None and tbptt_steps is not None:
        raise ConfigError(
            f"model.tbptt_steps={tbptt_steps} and model.truncation={type(truncation).__name__} both given: "
            "tbptt_steps is the shorthand for truncation Fixed(k); set one"
        )
    if truncation is not None:
        if not isinstance(truncation, TruncationPolicy):
            raise ConfigError(f"model.truncation: {type(truncation).__name__} is not a seqstab.tbptt.TruncationPolicy")
        return truncation
    return Fixed(tbptt_steps) if tbptt_steps is not None else Full()


def as_windows(length: int, steps: int | list[Window] | None) -> list[Window]:
    """Windows given as such, or those of ``Fixed(steps)`` (``steps`` None: ``Full``)."""
    if isinstance(steps, list):
        return steps
    return Fixed(steps).windows(length) if steps is not None else Full().windows(length)


# -- a window as a chunk of the batch ---------------------------------------------------------------------------


def window_chunk(
    batch: dict[str, torch.Tensor], window: Window, reduce: Callable[[torch.Tensor, torch.Tensor | None], Any] = None
) -> dict[str, torch.Tensor]:
    """The chunk ``{"x", "y", "mask", ...}`` ``(B, stop - start, ...)`` a window trains on: the batch's steps
    ``[start, stop)``, the unscored history masked out of the loss, and (``Unbiased``) the loss weight and the
    gradient factors (``reduce``, the task's loss reduction, gives the window's share of the batch's loss)."""
    length = batch["x"].shape[1]
    if window.start == 0 and window.stop >= length and window.score_from == 0 and not window.share:
        return batch  # the whole batch: full BPTT (or k >= L) trains on the batch as it is
    chunk = {key: value[:, window.start : window.stop] for key, value in batch.items()}  # (B, n, ...) views
    steps = window.stop - window.start
    if window.score_from > window.start:
        scored = torch.arange(steps, device=chunk["x"].device) >= window.score_from - window.start  # (n,)
        mask = chunk.get("mask")
        if mask is None:
            chunk["mask"] = scored.expand(chunk["x"].shape[0], steps)  # (B, n)
        else:
            scored = scored.view(1, steps, *([1] * (mask.dim() - 2)))
            chunk["mask"] = mask & scored if mask.dtype == torch.bool else mask * scored.to(mask.dtype)
    if window.share:
        if reduce is None:
            raise ValueError("window_chunk: a window weighted by its share needs the task's loss reduction")
        chunk[LOSS_WEIGHT] = share(batch, window, reduce)
    if window.compensate:
        scale = torch.ones(steps, dtype=torch.float32)
        for t, factor in window.compensate:
            scale[t - window.start] = factor
        chunk[GRAD_SCALE] = scale.to(chunk["x"].device)
    return chunk


@torch.no_grad()
def share(batch: dict[str, torch.Tensor], window: Window, reduce: Callable) -> torch.Tensor:
    """The window's share of the batch's loss, for any loss reduction linear in the per-step losses: the batch's
    reduced loss of a per-step loss that is 1 on the window's steps and 0 elsewhere, over the window's own reduced
    loss of all ones (a token mean: scored steps in the window / in the batch; a sum over time: 1)."""
    mask = batch.get("mask")
    shape = batch["y"].shape[:2] if "y" in batch else batch["x"].shape[:2]  # (B, L)
    ones = torch.zeros(shape, device=batch["x"].device)
    ones[:, window.score_from : window.stop] = 1.0
    whole = reduce(ones, mask)
    own_mask = None if mask is None else mask[:, window.score_from : window.stop]
    own = reduce(ones[:, window.score_from : window.stop], own_mask)
    return torch.where(own > 0, whole / own.clamp(min=1e-30), torch.zeros_like(whole))


def weighted(loss: torch.Tensor, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
    """The chunk's loss times its weight, where its window has one."""
    weight = chunk.get(LOSS_WEIGHT)
    return loss if weight is None else loss * weight.to(loss.dtype)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (bitwise), gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def forward(
    step: Callable[[dict[str, torch.Tensor], Hidden | None], tuple[torch.Tensor, Hidden]],
    chunk: dict[str, torch.Tensor],
    hidden: Hidden | None,
) -> tuple[torch.Tensor, Hidden]:
    """``step(chunk, hidden)`` (the task's ``forward_batch``); for a chunk with gradient factors, in pieces between
    the compensation steps, the state passed from one piece to the next through a factor on its gradient."""
    scale = chunk.get(GRAD_SCALE)
    if scale is None:
        return step(chunk, hidden)
    factors = scale.tolist()
    points = [i for i, f in enumerate(factors) if i > 0 and f != 1.0] + [len(factors)]
    timed = {key: value for key, value in chunk.items() if key not in (GRAD_SCALE, LOSS_WEIGHT)}  # (B, n, ...)
    outs, a = [], 0
    for b in points:
        if a > 0:  # hidden: the state the previous piece left
            hidden = map_hidden(lambda h, f=factors[a]: _ScaleGrad.apply(h, f), hidden)
        out, hidden = step({key: value[:, a:b] for key, value in timed.items()}, hidden)  # (B, b - a, ...)
        outs.append(out)
        a = b
    return torch.cat(outs, dim=1), hidden


# -- chunks (Fixed / Full windows) and which windows are scored ----------------------------------------------------


def chunks(batch: dict[str, torch.Tensor], steps: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """Cut every tensor of ``batch`` along time (dim 1) into consecutive chunks of length ``steps``."""
    for window in as_windows(batch["x"].shape[1], steps):
        yield window_chunk(batch, window)


def scored(batch: dict[str, torch.Tensor], steps: int | list[Window] | None) -> torch.Tensor | None:
    """For each window (``steps``: a list of windows, or ``Fixed(steps)``'s chunks): does its scored part hold a
    scored step? A bool tensor ``(num_windows,)`` on the batch's device; None without a ``mask`` (all are scored).

    A window whose steps are all masked out (truncated BPTT on a task scored at the last step: every chunk but the
    last) has no loss and no gradient; the training step only carries the hidden state across it.
    """
    mask = batch.get("mask")
    if mask is None:
        return None
    per_step = mask.reshape(mask.shape[0], mask.shape[1], -1).ne(0).any(dim=2).any(dim=0)  # (L,)
    windows = as_windows(per_step.shape[0], steps)
    if len(windows) == 1 and windows[0].score_from == 0:
        return per_step.any().reshape(1)
    if all(w.score_from == w.start for w in windows) and all(
        a.stop == b.start for a, b in zip(windows, windows[1:], strict=False)
    ):
        lengths = [w.stop - w.start for w in windows]
        return torch.stack([part.any() for part in per_step.split(lengths)])
    return torch.stack([per_step[w.score_from : w.stop].any() for w in windows])


def carries(windows: list[Window], i: int, length: int) -> bool:
    """Does the next window (or the batch's end) start where window ``i`` stops? Then its final state is carried."""
    following = windows[i + 1].start if i + 1 < len(windows) else length
    return following == windows[i].stop


@contextmanager
def scaled_lr(optimizer: Any, scale: float) -> Iterator[None]:
    """Every parameter group's learning rate times ``scale`` for one update (``VariableLength``), then back: to the
    rate before, or, where a scheduler stepped meanwhile, to its new rate over ``scale``."""
    if scale == 1.0:
        yield
        return
    groups = getattr(optimizer, "optimizer", optimizer).param_groups
    saved = [group["lr"] for group in groups]
    for group in groups:
        group["lr"] = group["lr"] * scale
    try:
        yield
    finally:
        for group, lr in zip(groups, saved, strict=True):
            group["lr"] = lr if group["lr"] == lr * scale else group["lr"] / scale


# -- hidden state ---------------------------------------------------------------------------------------------------


def map_hidden(fn: Callable[[torch.Tensor], torch.Tensor], hidden: Any) -> Any:
    """Apply ``fn`` to every tensor of a hidden state: any nest of tuples, lists and dicts of tensors (seqstab's
    nets: a tuple of ``h`` or ``(h, c)`` per layer); other leaves pass through."""
    if isinstance(hidden, torch.Tensor):
        return fn(hidden)
    if isinstance(hidden, (tuple, list)):
        return type(hidden)(map_hidden(fn, state) for state in hidden)
    if isinstance(hidden, dict):
        return {key: map_hidden(fn, state) for key, state in hidden.items()}
    return hidden


def detach(hidden: Any) -> Any:
    """Cut the graph at a window boundary: same values, no history."""
    return map_hidden(torch.Tensor.detach, hidden)


class HiddenCarry:
    """The hidden state one pass (train, val or test) carries from batch to batch when its data is stateful.

    A batch whose size differs from the one the state came from (e.g. a last, smaller batch) starts from zeros.
    """

    def __init__(self) -> None:
        self.state: Hidden | None = None
        self.batch_size: int | None = None  # of the batch the state came from

    def reset(self) -> None:
        self.state, self.batch_size = None, None

    def get(self, batch_size: int) -> Hidden | None:
        if self.state is not None and self.batch_size != batch_size:
            return None
        return self.state

    def put(self, hidden: Hidden | None, batch_size: int) -> None:
        self.state, self.batch_size = detach(hidden), batch_size


# -- the bias a policy costs: its gradient of a batch against full BPTT's ------------------------------------------


def truncation_bias(
    task: Any, batch: dict[str, torch.Tensor], windows: list[Window], hidden: Hidden | None, params: list
) -> dict[str, float]:
    """The cosine and norm ratio between the policy's gradient of ``batch`` (every window's per-step losses, each from
    its own truncated graph, reduced as the batch's loss) and the full-BPTT gradient of the same batch from the same
    state, at the current weights; and the bytes saved for backward by the largest window and by full BPTT.

    Nothing the training sees changes: gradients by ``torch.autograd.grad`` (``.grad`` untouched), the RNG forked
    and restored to the same state before each of the two passes (the same dropout masks where the shapes agree).
    """
    params = [p for p in params if p.requires_grad]
    mask = batch.get("mask")
    with torch.random.fork_rng(devices=_rng_devices(batch)):
        state = torch.get_rng_state()
        with _SavedBytes() as full_bytes:
            out, _ = task.forward_batch(batch, hidden)
            per_step = task.step_losses(out, batch)["loss"]  # (B, L)
        full = _grads(task.reduce_loss(per_step, mask), params)
        torch.set_rng_state(state)
        pieces, largest = [], 0
        at, h = 0, hidden
        for i, window in enumerate(windows):
            if at < window.start:
                with torch.no_grad():
                    _, h = task(batch["x"][:, at : window.start], h)
                at = window.start
            chunk = window_chunk(batch, window, task.reduce_loss)
            with _SavedBytes() as counted:
                out, new_h = forward(task.forward_batch, chunk, h)
                losses = task.step_losses(out, chunk)["loss"]  # (B, n)
            largest = max(largest, counted.bytes)
            pieces.append(losses[:, window.score_from - window.start :])
            if carries(windows, i, batch["x"].shape[1]):
                h, at = detach(new_h), window.stop
        truncated = _grads(task.reduce_loss(torch.cat(pieces, dim=1), mask), params)
    a = torch.cat([g.reshape(-1).double() for g in truncated])
    b = torch.cat([g.reshape(-1).double() for g in full])
    na, nb = a.norm(), b.norm()
    cosine = (a @ b / (na * nb)).item() if na > 0 and nb > 0 else math.nan
    return {
        "grad/truncation_cosine": cosine,
        "grad/truncation_norm_ratio": (na / nb).item() if nb > 0 else math.nan,
        "truncation/saved_bytes_per_update": float(largest),
        "truncation/saved_bytes_full_bptt": float(full_bytes.bytes),
    }


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _rng_devices(batch: dict[str, torch.Tensor]) -> list:
    device = batch["x"].device
    return [device] if device.type == "cuda" else []


class _SavedBytes:
    """Bytes of the tensors autograd saves for backward inside the block (each storage counted once)."""

    def __init__(self) -> None:
        self.bytes, self._seen = 0, set()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> _SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
