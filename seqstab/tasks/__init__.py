"""seqstab's LightningModules: each wraps one recurrent net and trains through the chunk loop around the update
core."""

from seqstab.tasks.base import (
    FUSED_MIN_VOCAB,
    TASK_OF_KIND,
    Forecaster,
    LanguageModel,
    SeqTask,
    SequenceClassifier,
    SequenceRegressor,
)

__all__ = [
    "FUSED_MIN_VOCAB",
    "TASK_OF_KIND",
    "Forecaster",
    "LanguageModel",
    "SeqTask",
    "SequenceClassifier",
    "SequenceRegressor",
]
