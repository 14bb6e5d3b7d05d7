"""seqstab: make exploding gradients in RNNs and LSTMs reproducible, visible and controllable."""

__version__ = "0.1.0"
