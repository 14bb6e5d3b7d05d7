"""What ``python -m seqstab.train`` says: a user's mistake as one line, and nothing of what Lightning and jsonargparse
say that a seqstab user cannot act on (the lines every command shares are :mod:`seqstab.cli.console`'s).

    user_error(err)      the one line for a bad argument, config, data or checkpoint, or a file that cannot be
                         written (a full disk); None for a bug, which keeps its traceback
    quiet()              the warnings and tips that are noise here, silenced
"""

from __future__ import annotations

import re
import traceback
import warnings
from argparse import ArgumentError
from collections.abc import Iterator
from pathlib import Path

from seqstab import internals
from seqstab.cli.console import DISK_FULL, one_line
from seqstab.core.errors import SeqstabError

__all__ = ["parser_message", "quiet", "user_error"]

HINTS = {
    "model": "--model seqstab.tasks.LanguageModel | Forecaster | SequenceRegressor | SequenceClassifier",
    "data": "--data datamodules.<module>.<DataModule>, e.g. datamodules.synthetic.AddingProblem",
}
WRITERS = {  # where a write failed (a frame of the traceback) -> what was written, for an OSError without a file name
    "tensorboard": "the TensorBoard event file",
    "save_hparams_to_yaml": "hparams.yaml",
}


def user_error(err: BaseException, run_dir: Path | None = None) -> str | None:
    """The one-line message for a user mistake (bad argument, config or data) or a full disk, or None for a bug.

    ``run_dir``: the run directory, named when a full disk stops a write that names no file."""
    if isinstance(err, ArgumentError):
        return parser_message(str(err))
    first = err
    while err is not None:  # jsonargparse wraps errors raised while instantiating classes
        if isinstance(err, SeqstabError):
            return one_line(str(err))
        err = err.__cause__ or err.__context__
    return _torch_optim_error(first) or _disk_full(first, run_dir)


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _torch_optim_error(err: BaseException) -> str | None:
    """torch.optim validates its arguments with ValueError (``Invalid learning rate: -1.0``): a config mistake."""
    for link in _chain(err):
        frames = traceback.extract_tb(link.__traceback__)
        if isinstance(link, ValueError) and frames:
            origin = Path(frames[-1].filename).as_posix()
            if "/torch/optim/" in origin:
                key = "lr_scheduler" if "lr_scheduler" in origin else "optimizer"
                return f"{key}: {one_line(str(link))}"
    return None


def _disk_full(err: BaseException, run_dir: Path | None) -> str | None:
    """A write the disk refused (full, over quota): the file it was for, or what was written and where."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in DISK_FULL:
            reason = link.strerror or str(link)
            if link.filename:
                return f"{link.filename}: cannot write it: {reason}"
            what = "a file"
            for frame in traceback.extract_tb(link.__traceback__):
                what = next((w for key, w in WRITERS.items() if key in frame.filename or key == frame.name), what)
            where = run_dir or Path.cwd()
            if " " not in what:  # a file's name
                return f"{where / what}: cannot write it: {reason}"
            return f"{where}: cannot write {what} there: {reason}"
    return None


def parser_message(message: str) -> str:
    """Shorten jsonargparse's nested union/subclass report to ``key.path: what is wrong``."""
    message = one_line(message)
    # a net (Callable[[int], nn.Module]) wraps its own argument's error: keep the inner one
    message = re.sub(r"(- )?Expected a path but \S+ either not accessible or invalid - ", "", message)
    message = re.sub(r"Type [^ ]*Callable.*? expects a function or a callable class: ", "", message)
    message = re.sub(r"\. Got value: Namespace\(class_path=.*$", "", message)
    keys = []
    while nested := re.match(r'Parser key "([^"]+)": .*?Problem with given class_path \'([^\']+)\': (.*)', message):
        keys.append(nested.group(1))
        message = re.sub(r" - Expected a <class 'NoneType'>.*$", "", nested.group(3))
        if not message.startswith("Parser key"):
            message = f"class_path {nested.group(2)!r}: {message}"
    while leaf := re.match(r'Parser key "([^"]+)": (.*)', message):
        keys.append(leaf.group(1))
        message = leaf.group(2)
    message = f"{'.'.join(keys)}: {message}" if keys else message
    missing = re.search(r"arguments are required: .*\b(model|data)\b", message)
    if missing:  # --data alone (or --model alone) skips the embedded default, which supplied the other
        message += f" (give {HINTS[missing.group(1)]}, or a --config that names both)"
    return message


def quiet() -> None:
    """Silence what Lightning and jsonargparse say that a seqstab user cannot act on, or that is wrong here."""
    for message in (
        r".*configure_optimizers` will be overridden",
        r"LightningCLI's args parameter is intended",  # we pass args on purpose
        # our checkpoints hold the state after the batch's updates: what an exact resume needs
        r"Using ModelCheckpoint with manual optimization and every_n_train",
        r"The number of training batches .* is smaller than the logging interval",  # seqstab logs every update
        r"The lr scheduler dict contains the key\(s\) \['monitor'\]",  # seqstab steps it on the monitor itself
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's internals, on newer torch
        r"\s*skip_none parameter was deprecated",  # jsonargparse, as LightningCLI calls it
        # a resume writes into a new run directory, an evaluation beside the run: the old best-k list is not needed
        r"The dirpath has changed from",
    ):
        warnings.filterwarnings("ignore", message=message)
    internals.drop_lightning_tips()
