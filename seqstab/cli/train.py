"""``python -m seqstab.train``: LightningCLI over seqstab's tasks and datamodules.

    python -m seqstab.train                                   # the embedded default experiment
    python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml --trainer.max_epochs 1
    python -m seqstab.train fit --print_config                # the resolved config, defaults included

A bad config is reported as one line (``seqstab.train: error: ...``) with exit code 2, before any run
directory is made. ``fit`` ends with a line saying how many of its updates were applied; one that applied none
(every update non-finite or flagged by the guard) exits with code 3.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from argparse import ArgumentError
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import lazy_instance
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from seqstab import _aliases, internals
from seqstab.cli.yaml_files import read_yaml
from seqstab.core import io as checkpoint
from seqstab.core.errors import ConfigError, SeqstabError
from seqstab.core.recipes import flatten
from seqstab.data.module import SeqDataModule
from seqstab.lightning.manifest import ManifestCallback, run_dir
from seqstab.lightning.resume import AtomicCheckpointIO
from seqstab.tasks import SeqTask

DEFAULT_CONFIG = resources.files("seqstab.cli") / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULT_LOGGER = "pytorch_lightning.loggers.TensorBoardLogger"
DEFAULT_SAVE_DIR = "runs"  # the default logger's save_dir: runs/<name>/version_<n>, under default_root_dir if set
EXIT_USER_ERROR = 2  # a bad argument, config, data or checkpoint: one line, nothing left behind
EXIT_NOTHING_APPLIED = 3  # fit ran, but the guard let no update through (every one non-finite or flagged)
POSITIVE = {"optimizer": ("lr",), "lr_scheduler": ("step_size", "T_max", "T_0", "total_steps", "gamma", "factor")}


class SeqstabCLI(internals.KeepConfigOnCkptPath, LightningCLI):
    """LightningCLI with seqstab's defaults: the embedded experiment, TensorBoard under ``runs/``, a fixed seed."""

    current: SeqstabCLI | None = None  # the CLI of this process, as soon as it exists (main's clean-up reads it)

    def __init__(self, args: list[str] | None = None, run: bool = True):
        SeqstabCLI.current = self
        no_exit = {"exit_on_error": False}
        super().__init__(
            SeqTask,
            SeqDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={
                "logger": lazy_instance(
                    TensorBoardLogger, save_dir=DEFAULT_SAVE_DIR, name="seqstab", default_hp_metric=False
                ),
                "callbacks": [ManifestCallback()],  # manifest.json in every run directory
            },
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**no_exit, **{cmd: no_exit for cmd in SUBCOMMANDS}},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.spec", "model.init_args.spec", apply_on="instantiate")

    # -- safe, exact resume (seqstab.checkpoint) -------------------------------------------------------------

    def check_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` loads (one line if not), but keep the config as given.

        LightningCLI would replace the model's settings with the checkpoint's hyperparameters, silently overriding
        ``--model.*`` (and only for an explicit path, not for ``last``). In seqstab the config is the run and the
        checkpoint its state: a checkpoint that does not fit the configured model is a one-line error naming the
        parameter (``SeqTask.on_load_checkpoint``).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            checkpoint.load(ckpt_path)

    def before_instantiate_classes(self) -> None:
        """Zero or negative learning rates and scheduler periods are one-line errors (torch accepts some of them), and
        so is a scheduler without an optimizer (LightningCLI would drop it without a word)."""
        trainer = internals.cli_group(self, self.config, "trainer")
        for key in ("max_steps", "max_epochs"):
            value = getattr(trainer, key, None)
            if isinstance(value, int) and value < -1:
                raise ConfigError(f"trainer.{key}={value}: must be -1 (no limit) or >= 0")
        _follow_default_root_dir(trainer)
        scheduler, optimizer = (internals.cli_group(self, self.config, g) for g in ("lr_scheduler", "optimizer"))
        if scheduler is not None and optimizer is None:
            raise ConfigError(
                "lr_scheduler is set but optimizer is not: a scheduler needs --optimizer (the task's default is "
                "--optimizer torch.optim.Adam --optimizer.lr 0.001)"
            )
        for group, keys in POSITIVE.items():
            init_args = getattr(internals.cli_group(self, self.config, group), "init_args", None)
            for key in keys:
                value = getattr(init_args, key, None)
                if isinstance(value, (int, float)) and not value > 0:
                    raise ConfigError(f"{group}.{key}={value!r}: must be > 0")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: make it atomic and safe
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _before_run(self) -> None:
        """Before anything is written: every output directory can be made, the checkpoint exists, and
        ``ckpt_path: last`` is found."""
        check_writable(self.trainer)
        subcommand_config = self.config_init[self.subcommand]
        ckpt_path = subcommand_config.get("ckpt_path")
        if ckpt_path == "last" and (found := find_last(self.trainer, self.experiment())) is not None:
            subcommand_config.ckpt_path = str(found)
        elif ckpt_path not in (None, "last", "best", "hpc", "registry") and not _exists_or_remote(ckpt_path):
            raise checkpoint.CheckpointError(f"{ckpt_path}: no such checkpoint file")
        if self.subcommand in EVAL_DIRS:
            self._log_beside(subcommand_config.get("ckpt_path"))

    def _log_beside(self, ckpt_path: str | None) -> None:
        """``validate``, ``test`` and ``predict`` write into the run they evaluate (``<run>/eval``,
        ``<run>/predict``), not into the next ``version_N`` (where the next ``fit`` would then not land): seqstab's
        default logger only, and only when no ``version`` was given (a logger or version of one's own is kept)."""
        logger = getattr(internals.cli_group(self, self.config, "trainer"), "logger", None)
        current = self.trainer.logger
        if type(current) is not TensorBoardLogger or len(self.trainer.loggers) != 1:
            return
        if getattr(getattr(logger, "init_args", None), "version", 0) is not None:
            return
        ckpt = Path(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
        if ckpt is not None:
            run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        else:  # nothing to evaluate but the initial weights: beside the experiment's runs
            run = Path(current.root_dir)
        self.trainer.loggers = [
            TensorBoardLogger(save_dir=str(run), name="", version=EVAL_DIRS[self.subcommand], default_hp_metric=False)
        ]

    def experiment(self) -> dict:
        """This command's resolved config, as ``config.yaml`` in a run directory holds it."""
        dumped = internals.cli_parser(self, self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        return yaml.safe_load(dumped) or {}

    def before_fit(self) -> None:
        self._before_run()

    def before_validate(self) -> None:
        self._before_run()

    def before_test(self) -> None:
        self._before_run()

    def before_predict(self) -> None:
        self._before_run()

    def after_fit(self) -> None:
        """The TensorBoard command, then the last line: how many updates were applied. A run that attempted updates
        and applied none exits with ``EXIT_NOTHING_APPLIED``."""
        log_dir = run_dir(self.trainer)
        if log_dir is not None and self.trainer.is_global_zero:
            print(f"\nView it in TensorBoard:\n  tensorboard --logdir {log_dir}\n")
        if self.trainer.is_global_zero:
            self._print_best()
            self._print_metrics("val", "last validation")
        core = getattr(self.model, "core", None)
        if core is not None and self.trainer.is_global_zero:
            self._print_control(core)
            print(f"seqstab: {core.summary()}", flush=True)
        if core is not None and core.updates and not core.applied:
            self.exit_code = EXIT_NOTHING_APPLIED

    def _print_control(self, core: Any) -> None:
        """Plain words on what the run's gradients did and what the model learned: the peak pre-clip norm against the
        clip threshold, and the last val/loss against the data's chance loss."""
        peak = core.guard.closing(core.clipping) if core.guard is not None else None
        if peak:
            print(f"seqstab: {peak}")
        loss, chance = self.trainer.callback_metrics.get("val/loss"), getattr(self.model.spec, "chance_loss", None)
        if loss is not None and chance:
            loss = float(loss)
            verdict = f"{chance / loss:.3g}x below chance" if loss < chance else "not below chance"
            print(f"seqstab: val/loss {loss:.4g} vs the chance loss {chance:.4g}: {verdict}")

    def after_validate(self) -> None:
        self._print_metrics("val")

    def after_test(self) -> None:
        self._print_metrics("test")

    def _print_metrics(self, split: str, title: str | None = None) -> None:
        """The split's metrics, one per line (in the data's units: ``mae``, ``ppl``...). The tasks write them to the
        logger at their own update step, so Lightning's results table (built from ``self.log(..., logger=True)``
        only) would be empty."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{split}/")}
        if metrics and self.trainer.is_global_zero:
            width = max(map(len, metrics))
            lines = [f"{name:<{width}}  {value:.6g}" for name, value in sorted(metrics.items())]
            print("\n" + "\n".join([f"{title}:"] * bool(title) + lines))

    def _print_best(self) -> None:
        """Where the run's best checkpoint is, and its monitored value (or the last checkpoint, without a monitor)."""
        callback = self.trainer.checkpoint_callback
        if callback is None:
            return
        if callback.monitor and callback.best_model_path and callback.best_model_score is not None:
            score = float(callback.best_model_score)
            print(f"best checkpoint ({callback.monitor} {score:.6g}): {callback.best_model_path}")
        elif callback.last_model_path or callback.best_model_path:
            print(f"last checkpoint: {callback.last_model_path or callback.best_model_path}")


def _follow_default_root_dir(trainer: Any) -> None:
    """``trainer.default_root_dir`` moves the run directory: seqstab's default logger writes under
    ``<default_root_dir>/runs`` (Lightning's own rule would leave it in ``./runs``, ignoring the setting). A logger
    given with its own ``save_dir`` keeps it."""
    root, logger = getattr(trainer, "default_root_dir", None), getattr(trainer, "logger", None)
    init_args = getattr(logger, "init_args", None)
    if root is None or init_args is None or getattr(logger, "class_path", "") != DEFAULT_LOGGER:
        return
    if getattr(init_args, "save_dir", None) == DEFAULT_SAVE_DIR:
        init_args.save_dir = str(Path(root) / DEFAULT_SAVE_DIR)


def with_default(args: list[str]) -> list[str]:
    """Run the embedded default experiment (``seqstab/cli/default.yaml``) unless a config, model or data is chosen.

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


EXPERIMENT_KEYS = ("model", "data", "optimizer", "lr_scheduler")  # what makes two runs one experiment
NOT_EXPERIMENT = {"data.predict_split", "data.num_workers"}  # ...except what changes no update
EVAL_DIRS = {"validate": "eval", "test": "eval", "predict": "predict"}  # under the evaluated checkpoint's run


def find_last(trainer, experiment: dict | None = None) -> Path | None:
    """The checkpoint ``--ckpt_path last`` means: the newest ``last*.ckpt`` of this experiment, else its newest
    ``*.ckpt`` (searched in every version directory under the logger's root, which Lightning does not, and in any
    ``ModelCheckpoint(dirpath=...)``). With ``experiment`` (this command's resolved config), only checkpoints whose
    run directory's ``config.yaml`` has the same model, data, optimizer and scheduler count; when there are
    checkpoints but none of them does, :class:`CheckpointError` names the newest and the first key that differs."""
    dirs = []
    for logger in trainer.loggers[:1]:
        if getattr(logger, "root_dir", None):
            dirs += Path(logger.root_dir).glob("*/checkpoints")
    dirs += [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    near_miss: tuple[Path, str] | None = None
    for pattern in ("last*.ckpt", "*.ckpt"):
        found = [p for d in dict.fromkeys(dirs) if d.is_dir() for p in d.glob(pattern) if p.is_file()]
        for path in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True):
            differs = None if experiment is None else _differs(experiment, path)
            if differs is None:
                return path
            near_miss = near_miss or (path, differs)
    if near_miss is not None:
        path, differs = near_miss
        raise checkpoint.CheckpointError(
            f"--ckpt_path last: no checkpoint of this experiment; the newest, {path}, is of a run whose {differs} "
            "(give its path to resume it anyway)"
        )
    return None


def _differs(experiment: dict, path: Path) -> str | None:
    """The first experiment key in which the run that saved ``path`` differs from ``experiment``; None if none."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return f"config.yaml is missing or unreadable ({run / 'config.yaml'})"
    mine, theirs = _canonical(flatten(experiment)), _canonical(flatten(saved))
    for key in sorted(set(mine) | set(theirs)):
        if key.split(".")[0] in EXPERIMENT_KEYS and key not in NOT_EXPERIMENT and mine.get(key) != theirs.get(key):
            return f"{key} is {theirs.get(key)!r} (here {mine.get(key)!r})"
    return None


def _canonical(flat: dict[str, Any]) -> dict[str, Any]:
    """Each class path as the class's own (``seqstab.clipping.NormClip``, a path from before the layout change, and
    ``seqstab.NormClip``, the public surface's, both name ``seqstab.core.clipping.NormClip``): runs that name one
    class by two paths are the same experiment."""
    return {key: _class_of(value) if key.endswith("class_path") else value for key, value in flat.items()}


def _class_of(path: Any) -> Any:
    if not isinstance(path, str):
        return path
    module, _, name = _aliases.canonical(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return path
    return f"{cls.__module__}.{cls.__qualname__}"


def check_yaml(args: list[str]) -> None:
    """Raise ConfigError naming a ``--config`` file that is not valid YAML, and where (jsonargparse does not)."""
    paths = [b for a, b in zip(args, args[1:], strict=False) if a in ("-c", "--config")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if Path(path).is_file():  # jsonargparse reports a missing file itself
            read_yaml(path)


def _exists_or_remote(path: str) -> bool:
    return "://" in str(path) or Path(path).exists()


def check_writable(trainer) -> None:
    """Raise ConfigError naming the setting whose directory cannot be created or written."""
    targets = {"trainer.default_root_dir": trainer.default_root_dir}
    for logger in trainer.loggers:
        if getattr(logger, "save_dir", None):
            targets["trainer.logger.save_dir"] = logger.save_dir
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None):
            targets["trainer.callbacks.dirpath"] = cb.dirpath
    for key, directory in targets.items():
        problem = _unwritable(Path(directory))
        if problem:
            raise ConfigError(f"{key}={str(directory)!r}: cannot write there: {problem}")


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be made in ``directory``, or None, found by trying: the directory is created, a file made
    and removed in it, and whatever this made is removed again (permission bits alone mislead: root passes
    ``os.access`` on ``/proc``)."""
    path = directory.absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    made = []
    try:
        for parent in reversed([path, *path.parents]):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        with tempfile.TemporaryFile(dir=path):
            pass
    except PermissionError:
        return f"permission denied on {existing}"
    except OSError as err:
        return f"{err.strerror or err} (creating a file in {path})"
    finally:
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
    return None


def user_error(err: BaseException) -> str | None:
    """The one-line message for a user mistake (bad argument, config or data), or None for a bug."""
    if isinstance(err, ArgumentError):
        return parser_message(str(err))
    first = err
    while err is not None:  # jsonargparse wraps errors raised while instantiating classes
        if isinstance(err, SeqstabError):
            return one_line(str(err))
        err = err.__cause__ or err.__context__
    return _torch_optim_error(first)


def _torch_optim_error(err: BaseException) -> str | None:
    """torch.optim validates its arguments with ValueError (``Invalid learning rate: -1.0``): a config mistake."""
    while err is not None:
        frames = traceback.extract_tb(err.__traceback__)
        if isinstance(err, ValueError) and frames:
            origin = Path(frames[-1].filename).as_posix()
            if "/torch/optim/" in origin:
                key = "lr_scheduler" if "lr_scheduler" in origin else "optimizer"
                return f"{key}: {one_line(str(err))}"
        err = err.__cause__ or err.__context__
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


HINTS = {
    "model": "--model seqstab.tasks.LanguageModel | Forecaster | SequenceRegressor | SequenceClassifier",
    "data": "--data datamodules.<module>.<DataModule>, e.g. datamodules.synthetic.AddingProblem",
}


def one_line(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()


def main(argv: list[str] | None = None) -> int:
    args = with_default(sys.argv[1:] if argv is None else list(argv))
    quiet(args[0] if args else "")
    SeqstabCLI.current = None
    roots = _run_roots(args)
    runs_before = {root: _existing_runs(root) for root in roots}
    try:
        check_yaml(args)
        cli = SeqstabCLI(args=args)
    except SystemExit as exit_:  # --help, --print_config and jsonargparse's own exits
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as err:
        if not _trained():  # a failed start leaves nothing behind, whatever failed; a run that trained keeps its dir
            for root, before in runs_before.items():
                _remove_new_runs(before, root)
        message = user_error(err)
        if message is None:
            raise
        print(f"seqstab.train: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return getattr(cli, "exit_code", 0)


def quiet(subcommand: str) -> None:
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
    ):
        warnings.filterwarnings("ignore", message=message)
    if subcommand in EVAL_DIRS:  # evaluating a checkpoint from elsewhere: its ModelCheckpoint state is not needed
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    internals.drop_lightning_tips()


def _trained() -> bool:
    """Whether the CLI of this process got as far as an update (after which its run directory is the user's); a resume
    refused while its checkpoint is restored (the update count restored, no batch drawn yet) did not."""
    model = getattr(SeqstabCLI.current, "model", None)
    core = getattr(model, "core", None)
    loop = getattr(getattr(SeqstabCLI.current, "trainer", None), "fit_loop", None)
    drawn = loop is None or loop.epoch_loop.batch_progress.total.ready > 0
    return core is not None and core.updates > 0 and drawn


def _run_roots(args: list[str]) -> list[str]:
    """Where this command's run directories go: ``runs``, or ``<default_root_dir>/runs``."""
    roots = [DEFAULT_SAVE_DIR]
    for i, arg in enumerate(args):
        if arg.startswith("--trainer.default_root_dir"):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
            if value:
                roots.append(str(Path(value) / DEFAULT_SAVE_DIR))
    return roots


def _existing_runs(root: str = "runs") -> set[Path]:
    """``runs`` itself, each experiment name under it and each run (version) directory."""
    base = Path(root)
    return {base, *base.glob("*"), *base.glob("*/*")} if base.is_dir() else set()


def _remove_new_runs(before: set[Path], root: str = "runs") -> None:
    """A failed start leaves nothing behind: remove run directories this invocation created (and the then empty
    experiment and ``runs`` directories it created), unless they hold a checkpoint."""
    for path in sorted(_existing_runs(root) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.rglob("*.ckpt")):
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
