"""Measurements on their way to the host without a synchronisation (:class:`HostCopy`), and the per-module
groups of parameters that ``grad/norm/<module>``, ``weight/norm/<module>`` and the histograms are taken over."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from seqstab import internals
from seqstab.core.logs import add_histogram
from seqstab.core.record import Run


class HostCopy:
    """A copy of a tensor on the host, queued behind the work already on its device: no synchronisation.

    The update's one sync (the loss read-back) completes it; :meth:`get` only waits for it in case it did not.
    """

    def __init__(self, tensor: torch.Tensor):
        cuda = tensor.is_cuda
        self.device = tensor.device  # where the tensor was copied from
        self.tensor = tensor.detach().to("cpu", non_blocking=cuda, copy=True)
        self.event = None
        if cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def get(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.tensor


class ModuleGroups:
    """The model's trained parameters grouped by module path, recurrent layers split into ``.ih`` and ``.hh``.

    Recurrent layers are the net's :func:`flow_layers` and every ``nn.RNN``/``LSTM``/``GRU``; a stacked one
    (``num_layers > 1``) is split per layer too (``<path>.l<k>.ih``, ``<path>.l<k>.hh``).

    Args:
        module: The model whose parameters are grouped (shared parameters count once, under their first owner).
        recurrent_layers: Recurrent layers besides ``nn.RNNBase`` ones (e.g. a net's own cells).
    """

    def __init__(self, module: nn.Module, recurrent_layers: list[nn.Module] = ()):
        recurrent = {id(layer) for layer in recurrent_layers}
        recurrent_paths, stacked = set(), set()
        for name, sub in module.named_modules():
            if id(sub) in recurrent or isinstance(sub, nn.RNNBase):
                recurrent_paths.add(name)
                if getattr(sub, "num_layers", 1) > 1:
                    stacked.add(name)
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        index: list[int] = []
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            owner, _, leaf = name.rpartition(".")
            group = owner or leaf
            if owner in recurrent_paths:
                layer = f".l{leaf.rsplit('_l', 1)[-1].removesuffix('_reverse')}" if owner in stacked else ""
                group = f"{owner}{layer}.{'hh' if '_hh' in leaf else 'ih'}"
            if group not in self.names:
                self.names.append(group)
            index.append(self.names.index(group))
            self.params.append(param)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.group_of = index  # group of each parameter
        self.index = torch.tensor(index, device=device)  # (P,) the same, on the device

    def norms(self) -> dict[str, torch.Tensor]:
        """``grad/norm/<group>`` and ``weight/norm/<group>`` as 0-dim device tensors (two fused passes)."""
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        grad_sq = self._group_sum_sq([self.params[i].grad for i in have], have)
        weight_sq = self._group_sum_sq([p.detach() for p in self.params], range(len(self.params)))
        grads, weights = grad_sq.sqrt(), weight_sq.sqrt()  # (G,) each
        tensors = {f"grad/norm/{name}": grads[g] for g, name in enumerate(self.names)}
        tensors.update({f"weight/norm/{name}": weights[g] for g, name in enumerate(self.names)})
        return tensors

    def _group_sum_sq(self, tensors: list[torch.Tensor], which) -> torch.Tensor:
        total = torch.zeros(len(self.names), device=self.index.device)
        if not tensors:
            return total
        squares = torch.stack([n.float() for n in internals.foreach_norm(tensors)]).square()  # (P',)
        index = self.index if len(tensors) == len(self.params) else self.index[list(which)]
        return total.index_add_(0, index, squares)

    def histogram_copies(self) -> dict[str, HostCopy]:
        """Every group's gradient (pre-clip) and weights, flattened, copied to the host."""
        grads: dict[str, list[torch.Tensor]] = defaultdict(list)
        weights: dict[str, list[torch.Tensor]] = defaultdict(list)
        for param, g in zip(self.params, self.group_of, strict=True):
            weights[self.names[g]].append(param.detach().flatten())
            if param.grad is not None:
                grads[self.names[g]].append(param.grad.detach().flatten())
        copies = {f"hist/grad/{name}": HostCopy(torch.cat(parts)) for name, parts in grads.items()}
        copies.update({f"hist/weight/{name}": HostCopy(torch.cat(parts)) for name, parts in weights.items()})
        return copies


def write_histograms(run: Run, step: int, copies: dict[str, HostCopy]) -> None:
    for tag, copy in copies.items():
        values = copy.get().float().numpy()
        values = values[np.isfinite(values)]
        if values.size:
            add_histogram(run, tag, values, step)
