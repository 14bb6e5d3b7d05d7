"""seqstab's datamodules, and the base classes for your own: see :mod:`datamodules.base`."""
