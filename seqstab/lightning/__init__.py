"""The Lightning glue: the ``GradientStability`` callback, the run a Trainer gives the stations, exact resume,
atomic checkpoint IO, the run manifest and the forecast writer. Lightning's private names are reached through
:mod:`seqstab.internals` only."""
