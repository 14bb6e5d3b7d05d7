"""Synthetic series that need no file: a sum of sines, and the Mackey–Glass delay equation (chaotic)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from datamodules.timeseries.module import Mode, _SeriesModule
from datamodules.timeseries.prepare import Series
from seqstab.core.errors import ConfigError, check_non_negative, check_positive

__all__ = ["MackeyGlass", "SumOfSines", "mackey_glass"]


class _Generated(_SeriesModule):
    """A series computed from its settings (:meth:`generate`), ``length`` rows, plus Gaussian noise of standard
    deviation ``noise`` drawn from ``seed`` after whatever :meth:`generate` drew from it."""

    def __init__(self, length: int, noise: float, seed: int, *windowing, **options):
        super().__init__(*windowing, **options)  # the settings of every series, in _SeriesModule's order
        check_positive(length=length)
        check_non_negative(noise=noise)
        self.length, self.noise, self.seed = length, float(noise), seed

    def generate(self, rng: np.random.Generator) -> np.ndarray:
        """The ``(length,)`` series before noise; ``rng`` is seeded with ``seed``."""
        raise NotImplementedError

    @property
    def source(self) -> str:
        """What messages call the series."""
        raise NotImplementedError

    def load(self) -> Series:
        rng = np.random.default_rng(self.seed)
        x = self.generate(rng)  # (N,)
        if self.noise:
            x = x + self.noise * rng.standard_normal(self.length)
        return Series(x[:, None], ["x"], 1, None, self.source)


class SumOfSines(_Generated):
    """A sum of sines with Gaussian noise: ``x_t = Σ_k sin(2π t / p_k + φ_k) + noise · ε_t``, phases from ``seed``.

    Args:
        length: Rows ``N``.
        periods: The periods ``p_k`` in steps.
        noise: Standard deviation of the added noise.
        seed: Seed of the phases and the noise.
        input_length: Window length ``L`` (in ``stream`` mode: steps per batch).
        horizon: Future steps predicted at each step.
        stride: Rows between window starts (``windows`` mode).
        mode: ``windows`` (stateless, shuffled) or ``stream`` (stateful truncated BPTT over each split).
        split: Fractions of the rows for train and val; test gets the rest.
        normalize: Standardise with the train split's mean and standard deviation.
        batch_size: Windows per batch (``windows`` mode).
        num_streams: Contiguous pieces the train split is cut into (``stream`` mode).
        num_workers: DataLoader worker processes (``windows`` mode).
        predict_split: The rows ``predict`` forecasts: ``val``, ``test`` (default) or ``all`` (the whole series);
            every origin the split is scored on, plus the last rows', whose horizon runs past the data.
    """

    def __init__(
        self,
        length: int = 4000,
        periods: tuple[float, ...] = (17.0, 31.0, 67.0),
        noise: float = 0.1,
        seed: int = 0,
        input_length: int = 48,
        horizon: int = 1,
        stride: int = 1,
        mode: Mode = "windows",
        split: tuple[float, float] = (0.7, 0.1),
        normalize: bool = True,
        batch_size: int = 32,
        num_streams: int = 1,
        num_workers: int = 0,
        predict_split: Literal["val", "test", "all"] = "test",
    ):
        super().__init__(length, noise, seed, input_length, horizon, stride, mode, split, normalize, batch_size,
                         num_streams, num_workers, predict_split=predict_split)  # fmt: skip
        check_positive(**{f"periods[{i}]": p for i, p in enumerate(periods)})
        self.periods = [float(p) for p in periods]

    def generate(self, rng: np.random.Generator) -> np.ndarray:
        t = np.arange(self.length)[:, None]  # (N, 1)
        phases = rng.uniform(0, 2 * np.pi, size=len(self.periods))  # (K,)
        return np.sin(2 * np.pi * t / np.asarray(self.periods) + phases).sum(axis=1)  # (N,)

    @property
    def source(self) -> str:
        return f"SumOfSines(seed={self.seed})"


def mackey_glass(length: int, tau: float = 17.0, a: float = 0.2, b: float = 0.1, n: float = 10.0, x0: float = 1.2,
                 dt: float = 0.1, sample_every: float = 1.0, discard: int = 500) -> np.ndarray:  # fmt: skip
    """Mackey–Glass ``dx/dt = a·x(t-τ) / (1 + x(t-τ)^n) - b·x(t)``, history ``x0`` for ``t <= 0``, integrated
    with 4th-order Runge–Kutta at step ``dt`` (delayed values linearly interpolated), sampled every
    ``sample_every`` time units after dropping ``discard`` samples of transient. Returns ``(length,)``."""
    lag = round(tau / dt)
    per_sample = round(sample_every / dt)
    if not (math.isclose(lag * dt, tau) and math.isclose(per_sample * dt, sample_every)):
        raise ConfigError(f"tau={tau} and sample_every={sample_every} must be multiples of dt={dt}")
    steps = (length + discard) * per_sample
    x = np.empty(lag + steps + 1)
    x[: lag + 1] = x0  # history: x(t) = x0 for t in [-tau, 0]

    def f(now: float, delayed: float) -> float:
        return a * delayed / (1.0 + delayed**n) - b * now

    for i in range(lag, lag + steps):
        d0, d1 = x[i - lag], x[i - lag + 1]
        dh = 0.5 * (d0 + d1)
        xi = x[i]
        k1 = f(xi, d0)
        k2 = f(xi + 0.5 * dt * k1, dh)
        k3 = f(xi + 0.5 * dt * k2, dh)
        k4 = f(xi + dt * k3, d1)
        x[i + 1] = xi + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x[lag::per_sample][discard : discard + length]


class MackeyGlass(_Generated):
    """The Mackey–Glass delay equation (a=0.2, b=0.1, n=10, τ=17: chaotic), sampled once per time unit.

    Args:
        length: Rows ``N``.
        tau: Delay τ.
        a: Production rate.
        b: Decay rate.
        n: Exponent.
        x0: Constant history for ``t <= 0``.
        noise: Standard deviation of Gaussian noise added to the samples (seeded).
        seed: Seed of the noise.
        input_length: Window length ``L`` (in ``stream`` mode: steps per batch).
        horizon: Future steps predicted at each step.
        stride: Rows between window starts (``windows`` mode).
        mode: ``windows`` (stateless, shuffled) or ``stream`` (stateful truncated BPTT over each split).
        split: Fractions of the rows for train and val; test gets the rest.
        normalize: Standardise with the train split's mean and standard deviation.
        batch_size: Windows per batch (``windows`` mode).
        num_streams: Contiguous pieces the train split is cut into (``stream`` mode).
        num_workers: DataLoader worker processes (``windows`` mode).
        predict_split: The rows ``predict`` forecasts: ``val``, ``test`` (default) or ``all`` (the whole series);
            every origin the split is scored on, plus the last rows', whose horizon runs past the data.
    """

    def __init__(
        self,
        length: int = 4000,
        tau: float = 17.0,
        a: float = 0.2,
        b: float = 0.1,
        n: float = 10.0,
        x0: float = 1.2,
        noise: float = 0.0,
        seed: int = 0,
        input_length: int = 48,
        horizon: int = 1,
        stride: int = 1,
        mode: Mode = "windows",
        split: tuple[float, float] = (0.7, 0.1),
        normalize: bool = True,
        batch_size: int = 32,
        num_streams: int = 1,
        num_workers: int = 0,
        predict_split: Literal["val", "test", "all"] = "test",
    ):
        super().__init__(length, noise, seed, input_length, horizon, stride, mode, split, normalize, batch_size,
                         num_streams, num_workers, predict_split=predict_split)  # fmt: skip
        check_positive(tau=tau)
        self.tau, self.a, self.b, self.n, self.x0 = tau, a, b, n, x0

    def generate(self, rng: np.random.Generator) -> np.ndarray:
        return mackey_glass(self.length, self.tau, self.a, self.b, self.n, self.x0)

    @property
    def source(self) -> str:
        return f"MackeyGlass(tau={self.tau})"
