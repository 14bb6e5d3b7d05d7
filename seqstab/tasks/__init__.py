"""seqstab's LightningModules: each wraps one recurrent net and trains through the chunk loop around the update
core (:class:`SeqTask`); one file per task."""

from seqstab.core.record import Update  # named here before the layout change
from seqstab.tasks.base import TASK_OF_KIND, SeqTask
from seqstab.tasks.forecaster import Forecaster
from seqstab.tasks.language_model import FUSED_MIN_LOGITS_BYTES, FUSED_MIN_VOCAB, LanguageModel
from seqstab.tasks.sequence import SequenceClassifier, SequenceRegressor

__all__ = [
    "FUSED_MIN_LOGITS_BYTES",
    "FUSED_MIN_VOCAB",
    "TASK_OF_KIND",
    "Forecaster",
    "LanguageModel",
    "SeqTask",
    "SequenceClassifier",
    "SequenceRegressor",
    "Update",
]
