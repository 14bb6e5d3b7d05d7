"""Recurrent nets as plain ``nn.Module`` (no Lightning), and the recurrent contract the stations measure them by."""

from seqstab.nets.recurrent import GATES, Hidden, LinearRNN, RecurrentNet, gate_blocks, initialise, spectral_radius

__all__ = ["GATES", "Hidden", "LinearRNN", "RecurrentNet", "gate_blocks", "initialise", "spectral_radius"]
