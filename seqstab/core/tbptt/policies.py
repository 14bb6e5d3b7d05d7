"""Truncation policies: where a batch is cut into windows, how far back each window's gradient reaches and what its
loss weighs (:class:`Full`, :class:`Fixed`, :class:`Overlapping`, :class:`VariableLength`, :class:`Unbiased`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqstab.core.errors import ConfigError, check_count


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

    Examples:
        >>> [(w.start, w.stop) for w in Fixed(4).windows(10)]
        [(0, 4), (4, 8), (8, 10)]
    """

    def __init__(self, k: int):
        check_count("k", k)
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
        check_count("k1", k1)
        check_count("k2", k2)
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
        check_count("k", k)
        check_count("min_len", min_len)
        check_count("max_len", max_len)
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
        check_count("stride", stride)
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
