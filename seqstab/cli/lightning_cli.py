""":class:`SeqstabCLI`: LightningCLI over seqstab's tasks and datamodules, with seqstab's defaults and checks.

parse        --ckpt_path checked to load (one line if not); the config kept as given; null on the command line
             None however deeply nested (seqstab.cli.argument_parser)
before       settings checked (seqstab.cli.preflight); Lightning's clipping settings mapped onto model.clipping,
instantiate  the ones seqstab's loop does not take refused (seqstab.cli.lightning_settings)
before run   output directories writable; --ckpt_path last found, FILE of this experiment
             (seqstab.cli.resume_match); validate/test/predict log beside the run they evaluate
run          checkpoints written atomically, config.yaml too; SIGTERM/SIGINT stop at a batch boundary with the
             state saved (seqstab.lightning.signals)
after        the closing lines (seqstab.cli.closing)
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import lazy_instance
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import BasePredictionWriter, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger

from seqstab import internals
from seqstab.cli.argument_parser import SeqstabArgumentParser
from seqstab.cli.closing import print_closing, print_metrics
from seqstab.cli.console import EXIT_NOTHING_APPLIED
from seqstab.cli.lightning_settings import apply_lightning_settings
from seqstab.cli.preflight import SUBCOMMANDS, check_nulls, check_settings, check_writable
from seqstab.cli.resume_match import check_resumes_experiment, find_last
from seqstab.cli.run_dirs import DEFAULT_SAVE_DIR, EVAL_DIRS, follow_default_root_dir, run_of
from seqstab.core import io as checkpoint
from seqstab.core.errors import ConfigError, SeqstabError
from seqstab.core.io import write_text
from seqstab.data.module import SeqDataModule
from seqstab.lightning.manifest import ManifestCallback
from seqstab.lightning.predictions import ForecastWriter
from seqstab.lightning.resume import AtomicCheckpointIO
from seqstab.lightning.signals import StopOnSignal
from seqstab.tasks import LanguageModel, SeqTask

__all__ = ["EXIT_NOTHING_APPLIED", "SeqstabCLI"]

REMOTE_OR_KEYWORD = (None, "last", "best", "hpc", "registry")  # --ckpt_path values that are not a local file


class SeqstabCLI(internals.KeepConfigOnCkptPath, LightningCLI):
    """LightningCLI with seqstab's defaults: the embedded experiment, TensorBoard under ``runs/``, a fixed seed.

    Args:
        args: The command line (after the program name).
        clipping_given: The user set ``model.clipping`` themselves (then ``trainer.gradient_clip_val`` is refused).
    """

    current: SeqstabCLI | None = None  # the CLI of this process, as soon as it exists (main's clean-up reads it)

    def __init__(self, args: list[str] | None = None, run: bool = True, clipping_given: bool = False):
        SeqstabCLI.current = self
        self.clipping_given = clipping_given
        self.notes: list[str] = []  # printed when the run starts, once every check has passed
        self._resumed: dict[str, Any] | None = None  # fit --ckpt_path FILE: what the checkpoint says of its run
        no_exit = {"exit_on_error": False}
        super().__init__(
            SeqTask,
            SeqDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={
                "logger": lazy_instance(  # max_queue: a flush's updates queue for the writer thread without waiting
                    TensorBoardLogger, save_dir=DEFAULT_SAVE_DIR, name="seqstab", default_hp_metric=False, max_queue=200
                ),
                "callbacks": [ManifestCallback(), StopOnSignal()],  # manifest.json; a clean stop on a signal
            },
            save_config_callback=AtomicSaveConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**no_exit, **{cmd: no_exit for cmd in SUBCOMMANDS}},
            parser_class=SeqstabArgumentParser,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.spec", "model.init_args.spec", apply_on="instantiate")

    def check_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` loads (one line if not), but keep the config as given.

        LightningCLI would replace the model's settings with the checkpoint's hyperparameters, silently overriding
        ``--model.*`` (and only for an explicit path, not for ``last``). In seqstab the config is the run and the
        checkpoint its state: a fit's setting that differs from the checkpoint's is refused
        (:func:`~seqstab.cli.resume_match.check_resumes_experiment`), and a checkpoint that does not fit the
        configured model is a one-line error naming the parameter (``SeqTask.on_load_checkpoint``).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            saved = checkpoint.load(ckpt_path)
            if subcommand == "fit" and isinstance(saved, dict):
                optimizers = [{"param_groups": s.get("param_groups")} for s in saved.get("optimizer_states") or []]
                keep = {"hyper_parameters": saved.get("hyper_parameters"), "lr_schedulers": saved.get("lr_schedulers")}
                self._resumed = {**keep, "optimizer_states": optimizers}  # not the tensors: they load again in fit

    def before_instantiate_classes(self) -> None:
        groups = {g: internals.cli_group(self, self.config, g) for g in ("trainer", "optimizer", "lr_scheduler")}
        check_settings(self.subcommand, groups)
        follow_default_root_dir(groups["trainer"])
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_nulls(config)
        note = apply_lightning_settings(config, groups["trainer"], self.clipping_given)
        self.notes += [note] if note else []

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: make it atomic and safe
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if isinstance(trainer.progress_bar_callback, TQDMProgressBar):  # ten redraws a second, not one an update
            internals.throttle_progress_bar(trainer.progress_bar_callback, seconds=0.1)
        for callback in trainer.callbacks:  # no call at every batch to a hook that does nothing
            internals.skip_unused_batch_hooks(callback)
        return trainer

    def _before_run(self) -> None:
        """Before anything is written: every output directory can be made, the checkpoint exists, ``ckpt_path:
        last`` is found, and one given by path is of this experiment."""
        check_writable(self.trainer)
        subcommand_config = self.config_init[self.subcommand]
        ckpt_path = subcommand_config.get("ckpt_path")
        if ckpt_path == "last" and (found := find_last(self.trainer, self.experiment())) is not None:
            subcommand_config.ckpt_path = str(found)
        elif ckpt_path not in REMOTE_OR_KEYWORD and "://" not in str(ckpt_path) and not Path(ckpt_path).exists():
            raise checkpoint.CheckpointError(f"{ckpt_path}: no such checkpoint file")
        elif self._resumed is not None:
            check_resumes_experiment(self.experiment(), Path(ckpt_path), self._resumed)
        self._resumed = None
        if self.subcommand in EVAL_DIRS:
            self._log_beside(subcommand_config.get("ckpt_path"))
        if self.subcommand == "predict":
            self._check_predictions_written()
        for note in self.notes:
            print(note, flush=True)

    def _check_predictions_written(self) -> None:
        """``predict`` writes what a prediction writer writes (``predictions.csv`` of a Forecaster, a
        ``BasePredictionWriter`` of one's own); without one it would end with an empty ``predict/`` directory."""
        callbacks = [*self.trainer.callbacks, *(self.model.configure_callbacks() or [])]
        if any(isinstance(cb, (BasePredictionWriter, ForecastWriter)) for cb in callbacks):
            return
        if isinstance(self.model, LanguageModel):
            instead = "for text use seqstab generate --ckpt_path CKPT, for a file's perplexity seqstab score"
        else:
            instead = "for its metrics use test (or validate)"
        raise ConfigError(
            f"predict: {type(self.model).__name__} writes no predictions (seqstab.tasks.Forecaster writes "
            f"predictions.csv; another task needs a prediction writer in trainer.callbacks); {instead}"
        )

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
        run = run_of(ckpt) if ckpt is not None else Path(current.root_dir)  # no checkpoint: beside the runs
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
        """The closing lines; a run that attempted updates and applied none, or that the guard stopped because
        ``max_consecutive_skips`` updates in a row were not applied, exits with ``EXIT_NOTHING_APPLIED``."""
        print_closing(self.trainer, self.model)
        late = next((cb.signum for cb in self.trainer.callbacks if isinstance(cb, StopOnSignal) and cb.signum), None)
        if late is not None and self.trainer.is_global_zero:
            print(f"seqstab: {signal.Signals(late).name} arrived as the run was finishing: it finished", flush=True)
        core = getattr(self.model, "core", None)
        stalled = getattr(getattr(core, "guard", None), "stop_reason", None) == "max_consecutive_skips"
        if core is not None and core.updates and (not core.applied or stalled):
            self.exit_code = EXIT_NOTHING_APPLIED

    def after_validate(self) -> None:
        print_metrics(self.trainer, "val")

    def after_test(self) -> None:
        print_metrics(self.trainer, "test")


class AtomicSaveConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run directory, written atomically: a full disk leaves no half-written
    file, and is one line naming it."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            logger = trainer.logger  # where Lightning's trainer.log_dir points, without its broadcast (rank 0 only)
            directory = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
            directory = directory or trainer.default_root_dir
            path = Path(directory) / self.config_filename
            try:
                write_text(path, self.parser.dump(self.config, skip_none=False))
            except OSError as err:
                raise SeqstabError(f"{path}: cannot write it: {err.strerror or err}") from None
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)  # every rank enters, as Lightning's does
