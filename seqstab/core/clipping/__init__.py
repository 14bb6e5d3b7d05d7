"""Clipping policies: one station of the optimization path, after backward (and AMP unscaling), before the guard.

A policy gets the parameters whose gradients it may change in place and returns a :class:`ClipResult`: the
pre-clip and post-clip global norms, whether it changed the gradient, and its threshold where it has one.
Choose one from YAML by class path::

    model:
      init_args:
        clipping:
          class_path: seqstab.clipping.ZClip
          init_args: {alpha: 0.97, z_thresh: 2.5}

Rules every policy keeps:
  * everything stays on the device: norms in one fused ``torch._foreach_norm`` pass, decisions by
    ``torch.where``, no ``.item()`` and no Python branch on a tensor value, so no host synchronisation here;
    the optimization path reads the results back together with the loss in its one transfer per update;
  * below its threshold it leaves the gradients bitwise unchanged (they are multiplied by exactly 1);
  * when the global norm is non-finite it is reported as such and the gradient is left as it is (never scaled
    to zeros or NaNs), and no running statistic takes it in: deciding what to do is the explosion guard's job;
  * it sees what the optimizer will see: gradients after ``manual_backward`` (so under DDP already all-reduced,
    and every rank takes the same decision) and after AMP unscaling (Lightning #18089).

Stateful policies (:class:`AutoClip`, :class:`ZClip`, :class:`AdaGC`) keep their state as tensors and Python ints;
it travels in the checkpoint (``state_dict``/``load_state_dict``) and loads with ``torch.load(weights_only=True)``.
"""

from seqstab.core.clipping.adaptive import AdaGC, AutoClip, ZClip
from seqstab.core.clipping.norms import ClipResult, global_norm, grads_of, norms_and_total, tensor_norms, unit_norms
from seqstab.core.clipping.policy import ClipPolicy, NoClip
from seqstab.core.clipping.rules import AGC, NormClip, PerParameterNormClip, ValueClip

__all__ = [
    "AdaGC",
    "AGC",
    "AutoClip",
    "ClipPolicy",
    "ClipResult",
    "global_norm",
    "grads_of",
    "NoClip",
    "NormClip",
    "norms_and_total",
    "PerParameterNormClip",
    "tensor_norms",
    "unit_norms",
    "ValueClip",
    "ZClip",
]
