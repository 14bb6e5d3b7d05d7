"""``python -m seqstab.train``: LightningCLI over seqstab's tasks and datamodules.

    python -m seqstab.train                                   # the embedded default experiment
    python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml --trainer.max_epochs 1
    python -m seqstab.train fit --print_config                # the resolved config, defaults included

A bad config is reported as one line (``seqstab.train: error: ...``) with exit code 2, before any run
directory is made.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from argparse import ArgumentError
from importlib import resources
from pathlib import Path

from jsonargparse import lazy_instance
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from datamodules.base import SeqDataModule
from seqstab.errors import SeqstabError
from seqstab.manifest import ManifestCallback
from seqstab.tasks import SeqTask

DEFAULT_CONFIG = resources.files("seqstab") / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SeqstabCLI(LightningCLI):
    """LightningCLI with seqstab's defaults: the embedded experiment, TensorBoard under ``runs/``, a fixed seed."""

    def __init__(self, args: list[str] | None = None, run: bool = True):
        no_exit = {"exit_on_error": False}
        super().__init__(
            SeqTask,
            SeqDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={
                "logger": lazy_instance(TensorBoardLogger, save_dir="runs", name="seqstab", default_hp_metric=False),
                "callbacks": [ManifestCallback()],  # manifest.json in every run directory
            },
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**no_exit, **{cmd: no_exit for cmd in SUBCOMMANDS}},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.spec", "model.init_args.spec", apply_on="instantiate")

    def after_fit(self) -> None:
        if self.trainer.is_global_zero and self.trainer.log_dir:
            print(f"\nView it in TensorBoard:\n  tensorboard --logdir {self.trainer.log_dir}\n")


def with_default(args: list[str]) -> list[str]:
    """Run the embedded default experiment (``seqstab/default.yaml``) unless a config, model or data is chosen.

    ``[]`` becomes ``fit`` on the default; ``fit --trainer.max_epochs 1`` overrides the default.
    """
    if not args:
        args = ["fit"]
    if args[0] not in SUBCOMMANDS:
        return args
    chosen = {"-c", "--config", "--model", "--data"}
    if any(arg.split("=")[0] in chosen for arg in args[1:]):
        return args
    return [args[0], "--config", str(DEFAULT_CONFIG), *args[1:]]


def user_error(err: BaseException) -> str | None:
    """The one-line message for a user mistake (bad argument, config or data), or None for a bug."""
    if isinstance(err, ArgumentError):
        return parser_message(str(err))
    while err is not None:  # jsonargparse wraps errors raised while instantiating classes
        if isinstance(err, SeqstabError):
            return one_line(str(err))
        err = err.__cause__ or err.__context__
    return None


def parser_message(message: str) -> str:
    """Shorten jsonargparse's nested union/subclass report to ``key.path: what is wrong``."""
    message = one_line(message)
    keys = []
    while nested := re.match(r'Parser key "([^"]+)": .*?Problem with given class_path \'([^\']+)\': (.*)', message):
        keys.append(nested.group(1))
        message = re.sub(r" - Expected a <class 'NoneType'>.*$", "", nested.group(3))
        if not message.startswith("Parser key"):
            message = f"class_path {nested.group(2)!r}: {message}"
    leaf = re.match(r'Parser key "([^"]+)": (.*)', message)
    if leaf:
        keys.append(leaf.group(1))
        message = leaf.group(2)
    return f"{'.'.join(keys)}: {message}" if keys else message


def one_line(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")  # we pass args on purpose
    args = with_default(sys.argv[1:] if argv is None else list(argv))
    runs_before = _existing_runs()
    try:
        SeqstabCLI(args=args)
    except SystemExit as exit_:  # --help, --print_config and jsonargparse's own exits
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        _remove_new_runs(runs_before)
        print(f"seqstab.train: error: {message}", file=sys.stderr)
        return 2
    return 0


def _existing_runs(root: str = "runs") -> set[Path]:
    base = Path(root)
    return set(base.glob("*/*")) if base.is_dir() else set()


def _remove_new_runs(before: set[Path], root: str = "runs") -> None:
    """A failed start leaves nothing behind: remove run directories this invocation created."""
    for path in _existing_runs(root) - before:
        if path.is_dir() and not any(path.rglob("*.ckpt")):
            shutil.rmtree(path, ignore_errors=True)
    base = Path(root)
    if base.is_dir() and not before and not any(base.iterdir()):
        os.rmdir(base)


if __name__ == "__main__":
    sys.exit(main())
