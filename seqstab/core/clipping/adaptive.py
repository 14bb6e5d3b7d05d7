"""Policies whose threshold follows the run's own history of gradient norms: :class:`AutoClip` (a percentile),
:class:`ZClip` (a z-score against an EMA), :class:`AdaGC` (per tensor, against an EMA of its own norms).
Their state is tensors and ints, kept in the checkpoint."""

from __future__ import annotations

import math

import torch

from seqstab import internals
from seqstab.core.clipping.norms import ClipResult, grads_of, norms_and_total, rescale_, scale_to
from seqstab.core.clipping.policy import ClipPolicy
from seqstab.core.errors import ConfigError, check_count, check_fraction, check_positive


class AutoClip(ClipPolicy):
    """Clip the global norm to the ``percentile``-th percentile of the norms seen so far (Seetharaman et al. 2020).

    At every update the pre-clip norm joins the history first, then the threshold is the percentile of the
    history, current norm included (the paper's Algorithm 1 and its reference ``autoclip.py``), computed with
    ``torch.nanquantile`` and linear interpolation as ``numpy.percentile``'s default. Non-finite norms are
    reported but kept out of the history (they still take a slot of the last ``history``). With no finite norm
    yet the threshold is NaN and nothing is clipped. With ``history=None`` the buffer grows for the whole run and
    each update sorts it: O(n log n); set ``history`` for long runs (torch.quantile caps it at 2**24 entries).

    Args:
        percentile: The p of the p-th percentile, in (0, 100]; the paper's best was 10.
        history: Use only the last ``history`` norms; None uses all of them (the paper).

    Examples:
        >>> weight = torch.nn.Parameter(torch.zeros(1))
        >>> policy = AutoClip(percentile=50)
        >>> for g in (1.0, 2.0, 3.0, 100.0):  # the last one is clipped to the median of all four norms
        ...     weight.grad = torch.tensor([g])
        ...     result = policy([weight])
        >>> float(result.pre_norm), float(result.threshold), float(weight.grad)
        (100.0, 2.5, 2.5)
    """

    def __init__(self, percentile: float = 10.0, history: int | None = None):
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile={percentile!r}: must be in (0, 100]")
        check_count("history", history)
        self.percentile = float(percentile)
        self.history = history
        self.steps = 0  # norms recorded so far
        self._norms: torch.Tensor | None = None  # (capacity,), NaN where empty or non-finite

    def _record(self, norm: torch.Tensor) -> torch.Tensor:
        """Write ``norm`` (NaN if non-finite) into the history buffer; return the buffer."""
        if self._norms is None:
            self._norms = torch.full((self.history or 64,), math.nan, dtype=norm.dtype, device=norm.device)
        self._norms = self._norms.to(device=norm.device, dtype=norm.dtype)
        if self.history is None and self.steps == len(self._norms):  # grow by doubling: amortised O(1)
            self._norms = torch.cat([self._norms, torch.full_like(self._norms, math.nan)])
        slot = self.steps % len(self._norms)
        self._norms[slot] = torch.where(torch.isfinite(norm), norm, math.nan)
        self.steps += 1
        return self._norms

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        grads = grads_of(params)
        norms, norm = norms_and_total(grads)
        threshold = torch.nanquantile(self._record(norm), self.percentile / 100, interpolation="linear")
        clipped, scale, finite = scale_to(norm, threshold)
        rescale_(grads, scale)
        return ClipResult(norm, norm * scale, clipped, threshold, norms, finite)

    def state_dict(self) -> dict:
        if self._norms is None:
            return {"steps": self.steps}
        return {"steps": self.steps, "norms": self._norms[: min(self.steps, len(self._norms))].detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        norms = state.get("norms")
        self._norms = None
        if norms is not None:
            capacity = self.history or max(64, 1 << max(len(norms) - 1, 0).bit_length())
            if len(norms) > capacity:
                raise ConfigError(f"AutoClip history={self.history}: the checkpoint holds {len(norms)} norms")
            self._norms = torch.full((capacity,), math.nan, dtype=norms.dtype)
            self._norms[: len(norms)] = norms


class ZClip(ClipPolicy):
    """Z-score clipping of gradient-norm spikes against an EMA of the norm's mean and variance (Kumar et al. 2025).

    As the reference implementation (github.com/bluorion-com/ZClip, ``mode="zscore"``,
    ``clip_option="adaptive_scaling"``, ``clip_factor=1``):

    * warm-up: the first ``warmup_steps`` norms are only collected (and capped at ``max_grad_norm`` if set); at
      the last of them ``μ`` and ``σ²`` start as their mean and population variance;
    * then ``z = (g - μ) / (σ + eps)``; on a spike (``z > z_thresh``) the gradient is rescaled to
      ``g* = μ + z_thresh·σ / (z / z_thresh)``, otherwise ``g* = g``; ``max_grad_norm``, if set, caps the result;
    * the EMA takes the clipped norm ``g*`` (before the ``max_grad_norm`` cap), variance after the mean:
      ``μ ← α μ + (1 - α) g*``, ``σ² ← α σ² + (1 - α) (g* - μ)²``.

    Differences: the rescale factor is exactly ``g*/g`` (the reference divides by ``g + 1e-6``), and a non-finite
    norm updates nothing (in warm-up it is left out of the initial mean and variance). The logged threshold is the
    level a norm must exceed to be clipped, ``min(μ + z_thresh·(σ + eps), max_grad_norm)``; none in warm-up unless
    ``max_grad_norm`` is set.

    Args:
        alpha: EMA smoothing factor of the mean and variance, in (0, 1).
        z_thresh: z-score above which a norm is a spike.
        warmup_steps: Updates whose norms initialise the mean and variance.
        max_grad_norm: Optional fixed cap on the global norm, in warm-up and after; None for no cap.
        eps: Added to σ in the z-score.
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        max_grad_norm: float | None = None,
        eps: float = 1e-6,
    ):
        check_fraction("alpha", alpha)
        check_positive(z_thresh=z_thresh, max_grad_norm=max_grad_norm, eps=eps)
        check_count("warmup_steps", warmup_steps)
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.warmup_steps = warmup_steps
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.eps = float(eps)
        self.steps = 0
        self._warmup: torch.Tensor | None = None  # (warmup_steps,) norms, NaN where non-finite
        self._mean: torch.Tensor | None = None
        self._var: torch.Tensor | None = None

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        grads = grads_of(params)
        norms, norm = norms_and_total(grads)
        if self.steps < self.warmup_steps:
            target, threshold = self._collect(norm), None
        else:
            target, threshold = self._adapt(norm)
        if self.max_grad_norm is not None:
            cap = torch.full_like(norm, self.max_grad_norm)
            target = torch.minimum(target, cap)
            threshold = cap if threshold is None else torch.minimum(threshold, cap)
        clipped, scale, finite = scale_to(norm, target)
        rescale_(grads, scale)
        self.steps += 1
        return ClipResult(norm, norm * scale, clipped, threshold, norms, finite)

    def _collect(self, norm: torch.Tensor) -> torch.Tensor:
        """Warm-up: store the norm; at the last warm-up step, start the EMA. Returns the (unclipped) target."""
        if self._warmup is None:
            self._warmup = torch.full((self.warmup_steps,), math.nan, dtype=norm.dtype, device=norm.device)
        self._warmup = self._warmup.to(device=norm.device, dtype=norm.dtype)
        self._warmup[self.steps] = torch.where(torch.isfinite(norm), norm, math.nan)
        if self.steps == self.warmup_steps - 1:
            self._mean = self._warmup.nanmean()
            self._var = (self._warmup - self._mean).square().nanmean()
            self._warmup = None
        return norm

    def _adapt(self, norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After warm-up: the z-score rule and the EMA update. Returns ``(target, detection threshold)``."""
        mean = self._mean.to(device=norm.device, dtype=norm.dtype)
        var = self._var.to(device=norm.device, dtype=norm.dtype)
        std = var.sqrt()
        z = (norm - mean) / (std + self.eps)
        finite = torch.isfinite(norm)
        spike = finite & (z > self.z_thresh)
        target = torch.where(spike, mean + self.z_thresh * std / (z / self.z_thresh), norm)
        new_mean = self.alpha * mean + (1 - self.alpha) * target
        new_var = self.alpha * var + (1 - self.alpha) * (target - new_mean).square()
        self._mean = torch.where(finite, new_mean, mean)
        self._var = torch.where(finite, new_var, var)
        return target, mean + self.z_thresh * (std + self.eps)

    def state_dict(self) -> dict:
        state: dict = {"steps": self.steps}
        for key in ("warmup", "mean", "var"):
            value = getattr(self, f"_{key}")
            if value is not None:
                state[key] = value.detach().cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        self._warmup, self._mean, self._var = (state.get(key) for key in ("warmup", "mean", "var"))
        if self.steps < self.warmup_steps and self._warmup is not None and len(self._warmup) != self.warmup_steps:
            raise ConfigError(
                f"ZClip warmup_steps={self.warmup_steps}: the checkpoint was taken with {len(self._warmup)}"
            )


class AdaGC(ClipPolicy):
    """Per-tensor adaptive clipping against an EMA of each tensor's own past clipped norms (Wang et al. 2025).

    "AdaGC: Improving Training Stability for Large Language Model Pretraining", arXiv 2502.11034 (Algorithm 1 of
    v1; v2 keeps the rule), as ``kozistr/pytorch_optimizer``'s ``AdaGC`` transcribes it. For each parameter tensor
    i, with ``‖g_i‖`` its gradient's L2 norm and ``γ_i`` the tensor's reference norm:

    * warm-up, the first ``warmup_steps`` updates: global norm clipping at ``max_norm`` (the paper's λ_abs),
      ``ĝ = g · min(1, max_norm / ‖g‖)``, and ``γ_i`` is the running minimum of the clipped norms,
      ``γ_i ← min(γ_i, ‖ĝ_i‖)`` (the first one starts it);
    * after: each tensor on its own, ``ĝ_i = g_i · min(1, lambda_rel · γ_i / ‖g_i‖)``, then
      ``γ_i ← beta · γ_i + (1 - beta) · ‖ĝ_i‖`` (the threshold uses γ from before this update).

    Choices where the paper leaves room, and where seqstab's rules differ:

    * "warm-up" counts updates attempted (skipped ones too), from 0: updates ``0 … warmup_steps-1``;
    * ``‖ĝ_i‖`` is computed as ``‖g_i‖ · scale`` from the one fused norm pass, not measured again;
    * a zero gradient norm carries no scale and never enters ``γ_i`` (in warm-up or after): a tensor whose gradient
      is exactly zero at some update — ``W_hh`` on a chunk of one step from a zero state, an unused embedding —
      would otherwise pin its ``γ_i`` at 0 and freeze the tensor for good. A tensor with no non-zero norm yet has
      no ``γ_i``: it is not clipped, and its first non-zero clipped norm starts ``γ_i``;
    * a non-finite global norm is reported, the gradient left as it is, and no ``γ_i`` changes (the guard decides);
    * the state is one ``γ_i`` per parameter handed to the policy (in that order), so a tensor without a gradient at
      some update keeps its own ``γ_i`` and the others stay aligned.

    The logged threshold is ``max_norm`` in warm-up and none after (the rule is per tensor). ``tensor_norms`` are the
    pre-clip per-tensor norms, as for every policy. The defaults are those of pytorch_optimizer's transcription
    (λ_rel 1.05, β 0.98, T_start 100, λ_abs 1.0 for the GlobalGC warm-up); set ``warmup_steps`` well below the
    run's length, and ``max_norm`` as you would NormClip's.

    Args:
        max_norm: Global-norm threshold of the warm-up (the paper's λ_abs); a threshold carries over only with the
            same loss reduction (see :class:`NormClip`).
        lambda_rel: Largest ratio of a tensor's gradient norm to its reference ``γ_i`` after warm-up (the paper's
            λ_rel; > 1 lets a tensor's norm grow by at most that factor over its history per update).
        beta: EMA coefficient of ``γ_i``, in (0, 1).
        warmup_steps: Updates of global clipping that start every ``γ_i`` (the paper's T_start); 0 starts each ``γ_i``
            from its first non-zero norm, unclipped.
    """

    def __init__(self, max_norm: float = 1.0, lambda_rel: float = 1.05, beta: float = 0.98, warmup_steps: int = 100):
        check_positive(max_norm=max_norm, lambda_rel=lambda_rel)
        check_fraction("beta", beta)
        check_count("warmup_steps", warmup_steps, minimum=0)
        self.max_norm = float(max_norm)
        self.lambda_rel = float(lambda_rel)
        self.beta = float(beta)
        self.warmup_steps = warmup_steps
        self.steps = 0
        self._gamma: torch.Tensor | None = None  # (len(params),) γ_i; NaN where tensor i has no γ yet

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        present = [i for i, p in enumerate(params) if p.grad is not None]  # host-side: which tensors have gradients
        grads = [params[i].grad for i in present]
        norms, norm = norms_and_total(grads)
        if norms is None:
            return ClipResult(norm, norm, torch.zeros((), dtype=torch.bool))
        gamma = self._gamma_for(len(params), norms)
        every = len(present) == len(params)
        gamma_now = gamma if every else torch.stack([gamma[i] for i in present])  # (P,) views, no host sync
        finite = torch.isfinite(norm)
        if self.steps < self.warmup_steps:
            threshold = torch.full_like(norm, self.max_norm)
            clipped, scale, _ = scale_to(norm, threshold)
            rescale_(grads, scale)
            kept, post = norms * scale, norm * scale  # (P,) clipped per-tensor norms; clipped global norm
            updated = torch.fmin(gamma_now, kept)  # fmin: a missing γ (NaN) takes the norm
        else:
            threshold = None
            limit = self.lambda_rel * gamma_now  # NaN where no γ yet: never above it
            over = finite & (norms > limit)
            scales = torch.where(over, limit / norms, torch.ones_like(norms))
            internals.foreach_mul_(grads, list(scales.unbind()))
            kept = norms * scales
            clipped, post = over.any(), torch.linalg.vector_norm(kept)
            updated = torch.where(gamma_now.isnan(), kept, self.beta * gamma_now + (1 - self.beta) * kept)
        gamma_now = torch.where(finite & (kept > 0), updated, gamma_now)
        if every:
            self._gamma = gamma_now
        else:
            slots = list(gamma.unbind())
            for j, i in enumerate(present):
                slots[i] = gamma_now[j]
            self._gamma = torch.stack(slots)
        self.steps += 1
        return ClipResult(norm, post, clipped, threshold, norms)

    def _gamma_for(self, count: int, norms: torch.Tensor) -> torch.Tensor:
        """``(count,)`` γ on the norms' device and dtype: the state's, or all missing (NaN) at the first update."""
        if self._gamma is None:
            return torch.full((count,), math.nan, dtype=norms.dtype, device=norms.device)
        if len(self._gamma) != count:
            raise ConfigError(f"AdaGC: the state holds γ for {len(self._gamma)} tensors, the model has {count}")
        return self._gamma.to(device=norms.device, dtype=norms.dtype)

    def state_dict(self) -> dict:
        state: dict = {"steps": self.steps}
        if self._gamma is not None:
            state["gamma"] = self._gamma.detach().cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        self._gamma = state.get("gamma")
