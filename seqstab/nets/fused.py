"""The decoder and the cross-entropy of a language model in one pass, chunk by chunk over rows.

The unfused loss of ``N = B·k`` positions over a vocabulary of ``V`` writes the ``(N, V)`` logits, their log-softmax
and, in backward, the gradient of each: several ``N × V`` arrays (93 MB each for 700 positions and WikiText-2's
33,278 words) written and read again. :func:`linear_cross_entropy` computes, for ``c`` rows at a time::

    logits = h_c @ W.T + b                    (c, V)   the only (·, V) array, reused for every chunk's work
    loss  -= Σ w_i log_softmax(logits_i)[y_i]
    G      = softmax(logits_i) - onehot(y_i)             in place: dloss/dlogits of the chunk, less the row weights
    dh_c   = w ⊙ (G @ W)    dW += G.T @ (w ⊙ h_c)    db += G.T @ w      the weights scale (c, H) factors only

in the forward pass, so backward only scales the saved ``dh``, ``dW`` and ``db`` by the incoming gradient: the
three GEMMs of the unfused decoder, with the logits never materialised in full and their gradient never re-read
from memory. The loss is ``Σ_i w_i · ce_i`` with one weight per row: the token mean (``1/N``), a mask
(``mask_i / Σ mask``) or the sum over time averaged over the batch (``mask_i / B``) are all such weights.
The result equals ``(F.cross_entropy(h @ W.T + b, y, reduction="none") * w).sum()`` and its gradients up to float32
rounding (the sums run in another order): ``tests/test_fused.py``.
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_BYTES", "IGNORE_INDEX", "MAX_CHUNKS", "chunk_rows_for", "linear_cross_entropy"]

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: such a target scores nothing
CHUNK_BYTES = 16 * 2**20  # logits of one chunk, if that takes at most MAX_CHUNKS chunks
MAX_CHUNKS = 3  # each chunk re-reads W and dW: at V = 200k, 17 chunks of 41 rows 4.6-6.1 s, 3 of 234 3.8-4.1 s


def chunk_rows_for(rows: int, vocab_size: int, element_size: int = 4) -> int:
    """Rows per chunk: equal chunks of about :data:`CHUNK_BYTES` of logits, but no more than :data:`MAX_CHUNKS`.

    At V = 33,278 and 700 rows: 3 chunks of 234 rows (31 MB each, under glibc's 32 MiB mmap threshold, so the
    buffers come back from the heap instead of being mapped and page-faulted afresh); at V = 200,000: 3 of 234 rows
    (187 MB each, against the unfused 560 MB logits, their log-softmax and their gradient)."""
    per_budget = max(1, CHUNK_BYTES // max(1, vocab_size * element_size))
    chunks = min(MAX_CHUNKS, -(-rows // per_budget))
    return max(1, -(-rows // chunks))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    row_weight: torch.Tensor,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``Σ_i row_weight_i · cross_entropy(hidden_i @ weight.T + bias, target_i)`` without the ``(N, V)`` logits.

    Args:
        hidden: ``(N, H)`` inputs of the decoder (the net's output after dropout).
        weight: ``(V, H)`` decoder weight (the embedding's, with tied weights).
        bias: ``(V,)`` decoder bias, or None.
        target: ``(N,)`` token ids; :data:`IGNORE_INDEX` scores nothing (as ``F.cross_entropy``).
        row_weight: ``(N,)`` weight of each row's loss (no gradient flows to it).
        chunk_rows: Rows per chunk; None: :func:`chunk_rows_for`.

    Returns:
        The scalar loss; its backward gives ``hidden``, ``weight`` and ``bias`` their gradients.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: expected (N, H) and (V, H)")
    if target.shape != hidden.shape[:1] or row_weight.shape != hidden.shape[:1]:
        raise ValueError(
            f"target {tuple(target.shape)} and row_weight {tuple(row_weight.shape)}: expected ({hidden.shape[0]},)"
        )
    rows = chunk_rows or chunk_rows_for(hidden.shape[0], weight.shape[0], weight.element_size())
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, row_weight, rows)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, when any input needs one, its gradients; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, row_weight, chunk_rows):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        ignored = target == IGNORE_INDEX
        target = target.masked_fill(ignored, 0)
        row_weight = row_weight.to(hidden.dtype).masked_fill(ignored, 0)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None  # the first chunk writes, the others add
        grad_b = torch.empty_like(bias) if need_b else None
        loss = hidden.new_zeros((), dtype=torch.float32)
        weight_t = weight.t()
        minus_one = hidden.new_full((min(chunk_rows, hidden.shape[0]), 1), -1.0)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h, y, w = hidden[rows], target[rows, None], row_weight[rows]  # (c, H), (c, 1), (c,)
            logits = torch.addmm(bias, h, weight_t) if bias is not None else h @ weight_t  # (c, V)
            log_p = torch.log_softmax(logits, dim=1)  # (c, V)
            del logits
            loss -= (log_p.gather(1, y).squeeze(1) * w).sum(dtype=torch.float32)
            if not (need_h or need_w or need_b):
                continue
            grad = log_p.exp_().scatter_add_(1, y, minus_one[: len(w)])  # softmax - onehot, in place (c, V)
            # the row weights scale the (c, H) factors and a GEMV, not the (c, V) gradient
            if need_h:
                torch.mm(grad, weight, out=grad_h[rows]).mul_(w[:, None])
            beta = 0 if start == 0 else 1  # beta 0: the empty buffer's contents are ignored
            if need_w:
                grad_w.addmm_(grad.t(), h * w[:, None], beta=beta)
            if need_b:
                grad_b.addmv_(grad.t(), w, beta=beta)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grads = ctx.saved_tensors
        if grad_loss.device.type != "cpu" or grad_loss.item() != 1.0:  # (a loss trained as is: nothing to scale)
            grads = [None if g is None else g * grad_loss.to(g.dtype) for g in grads]
        return (*grads, None, None, None)
