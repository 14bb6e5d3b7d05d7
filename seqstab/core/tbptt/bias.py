"""``truncation_bias_every_n_steps``: the policy's gradient of a batch against full BPTT's, and the bytes each
saves for backward."""

from __future__ import annotations

import math
from typing import Any

import torch

from seqstab.core.tbptt.carry import detach
from seqstab.core.tbptt.chunks import carries, forward, window_chunk
from seqstab.core.tbptt.policies import Window
from seqstab.nets.recurrent import Hidden


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
