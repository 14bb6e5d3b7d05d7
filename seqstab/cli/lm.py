"""A trained language model read back from its Lightning checkpoint, with the tokenizer it was trained with: what
``python -m seqstab.generate`` and ``python -m seqstab.score`` share.

A checkpoint is data and runs no code: it is read with :func:`seqstab.checkpoint.load` (``weights_only=True``), and
the model is rebuilt from its class path and hyperparameters under replay's rules
(:func:`seqstab.replay.check_trusted`: seqstab's own classes, or modules named with ``--trust``). The tokenizer is the
text datamodule's checkpoint state (:func:`seqstab.vocab.find_datamodule_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqstab.core import io as checkpoint
from seqstab.core.errors import ConfigError, SeqstabError
from seqstab.core.io import CheckpointError
from seqstab.data.vocab import TextCodec, find_datamodule_state

__all__ = ["TrainedLM", "load_lm"]

LM_CLASS = "seqstab.tasks.LanguageModel"


@dataclass
class TrainedLM:
    """A language model in eval mode and how its text was read.

    Args:
        model: The ``seqstab.tasks.LanguageModel`` (or subclass), weights loaded, in eval mode.
        codec: Its tokenizer and vocabulary.
        eval_batch_size: Parallel streams evaluation cut a split into (``data.eval_batch_size``).
        seq_len: Tokens per stream in one evaluation batch (``data.seq_len``).
    """

    model: Any
    codec: TextCodec
    eval_batch_size: int
    seq_len: int


def load_lm(path: str | Path, trust: list[str] = ()) -> TrainedLM:
    """The language model a checkpoint holds, with its tokenizer.

    Raises:
        CheckpointError: one line: the file is missing, not a checkpoint, of another task, or holds no tokenizer.
        ConfigError: its model names a class from a module neither seqstab's nor trusted, or cannot be rebuilt.
    """
    path = Path(path)
    saved = checkpoint.load(path)
    parts = ("hyper_parameters", "state_dict")
    if not isinstance(saved, dict) or not all(isinstance(saved.get(part), dict) for part in parts):
        raise CheckpointError(f"{path}: not a checkpoint of a seqstab task (no hyper_parameters or state_dict)")
    hparams = saved["hyper_parameters"]
    spec = hparams.get("spec") if isinstance(hparams.get("spec"), dict) else {}
    class_path = hparams.get("_class_path") or _class_of_kind(spec.get("kind"))
    if class_path is None:
        raise CheckpointError(f"{path}: not a checkpoint of a seqstab task (its hyperparameters name no model)")
    recipe = {"task_class": class_path, "hparams": hparams, "kind": "task", "state_dict": saved["state_dict"]}

    from seqstab import replay  # (Lightning, imported only once the file is a checkpoint)
    from seqstab.core.recipes import resolve
    from seqstab.tasks import LanguageModel, SeqTask

    replay.check_trusted(recipe, list(trust), what="checkpoint")
    cls = resolve(class_path, SeqTask, "checkpoint model")
    if not issubclass(cls, LanguageModel) or spec.get("kind") != "lm":
        raise CheckpointError(
            f"{path}: a checkpoint of {class_path} (data kind {spec.get('kind')!r}), not of a language model: "
            f"generate and score read {LM_CLASS} checkpoints"
        )
    state = find_datamodule_state(saved)
    if state is None:
        raise CheckpointError(
            f"{path}: holds no tokenizer (written before checkpoints carried one, or trained on a datamodule that is "
            "not a datamodules.text one); train it again to get one that does"
        )
    try:
        codec = TextCodec.from_state(state.get("codec"))
    except (ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: its tokenizer is unreadable: {err}") from None
    try:
        model = replay.rebuild_model(recipe, what="checkpoint")
        batching = int(state.get("eval_batch_size") or 1), int(state.get("seq_len") or 35)
    except RuntimeError as err:  # load_state_dict: weights that do not fit the model the hyperparameters build
        raise CheckpointError(f"{path}: its weights do not fit its model: {_first_line(err)}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a damaged file (ConfigError is a ValueError)
        if isinstance(err, SeqstabError):
            raise
        raise CheckpointError(
            f"{path}: its model cannot be rebuilt from what it holds ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if len(codec.vocab) != model.spec.vocab_size:
        raise CheckpointError(
            f"{path}: its tokenizer has {len(codec.vocab):,} tokens, its model {model.spec.vocab_size:,}"
        )
    model.eval()
    return TrainedLM(model, codec, *batching)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _class_of_kind(kind: Any) -> str | None:
    """The seqstab task of a data kind, for a checkpoint written outside the CLI (no ``_class_path``)."""
    from seqstab.tasks import TASK_OF_KIND

    name = TASK_OF_KIND.get(kind)
    return f"seqstab.tasks.{name}" if name else None
