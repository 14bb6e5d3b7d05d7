"""A test fixture datamodule: the adding problem with one training batch scaled by a large factor (a data outlier).

Used by ``configs/explode/cause_data.yaml`` and ``tests/test_diagnose.py``: a clean setup whose only explosion is
that batch, so the diagnosis must name the data.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from datamodules.synthetic import AddingProblem, _as_dict


class SpikedAdding(AddingProblem):
    """:class:`~datamodules.synthetic.AddingProblem` whose ``spike_batch``-th training batch of the run (0-based,
    counted across epochs) has its inputs and targets multiplied by ``spike_scale``.

    Args:
        spike_batch: Which training batch is scaled.
        spike_scale: By how much.
        **kwargs: The adding problem's (``seq_len``, ``num_train``, ``batch_size`` ...).
    """

    def __init__(self, spike_batch: int = 8, spike_scale: float = 1e4, **kwargs):
        super().__init__(**kwargs)
        self.spike_batch, self.spike_scale = spike_batch, spike_scale
        self.collated = 0  # training batches made so far

    def _spiked(self, items):
        batch = _as_dict(items)
        if self.collated == self.spike_batch:
            batch["x"], batch["y"] = batch["x"] * self.spike_scale, batch["y"] * self.spike_scale
        self.collated += 1
        return batch

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        return DataLoader(loader.dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self._spiked)
