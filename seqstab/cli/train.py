"""``python -m seqstab.train``: LightningCLI over seqstab's tasks and datamodules.

    python -m seqstab.train                                   # the embedded default experiment
    python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml --trainer.max_epochs 1
    python -m seqstab.train fit --print_config                # the resolved config, defaults included

A bad config is reported as one line (``seqstab.train: error: ...``) with exit code 2, before any run
directory is made. ``fit`` ends with a line saying how many of its updates were applied; one that applied none
(every update non-finite or flagged by the guard) exits with code 3. SIGTERM or SIGINT during a fit stops it at
the end of the batch in flight with its state in ``last.ckpt`` (resume: ``--ckpt_path last``) and exits with the
shell's code for the signal, 143 or 130 (:mod:`seqstab.lightning.signals`).

The jobs are in their own modules: the LightningCLI (:mod:`seqstab.cli.lightning_cli`), the checks before anything
is written (:mod:`seqstab.cli.preflight`, :mod:`seqstab.cli.lightning_settings`), which checkpoint resumes
(:mod:`seqstab.cli.resume_match`), run directories (:mod:`seqstab.cli.run_dirs`), messages
(:mod:`seqstab.cli.messages`, :mod:`seqstab.cli.console`) and the closing lines (:mod:`seqstab.cli.closing`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from seqstab.cli.closing import print_closing, print_stopped
from seqstab.cli.console import warnings_as_lines
from seqstab.cli.heap import keep_heap
from seqstab.cli.lightning_cli import EXIT_NOTHING_APPLIED, SeqstabCLI
from seqstab.cli.messages import quiet, user_error
from seqstab.cli.preflight import DEFAULT_CONFIG, SUBCOMMANDS, check_config_files, with_default
from seqstab.cli.resume_match import find_last
from seqstab.cli.run_dirs import existing_runs, remove_new_runs, run_roots
from seqstab.lightning.manifest import run_dir
from seqstab.lightning.signals import StoppedBySignal, stop_at_once

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_NOTHING_APPLIED",
    "EXIT_USER_ERROR",
    "SUBCOMMANDS",
    "SeqstabCLI",
    "find_last",
    "main",
    "with_default",
]

EXIT_USER_ERROR = 2  # a bad argument, config, data or checkpoint, a full disk: one line, nothing half-written


def main(argv: list[str] | None = None) -> int:
    """``python -m seqstab.train ARGV``; its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    SeqstabCLI.current = None
    keep_heap()  # freed memory stays with the process: an update's large arrays are not faulted in again each time
    with stop_at_once(), warnings_as_lines():
        return _run(args)


def _run(args: list[str]) -> int:
    runs_before = {root: existing_runs(root) for root in run_roots(args)}
    try:
        configs = check_config_files(args)
        args = with_default(args, configs)
        quiet()
        cli = SeqstabCLI(args=args, clipping_given=_clipping_given(args, configs))
    except SystemExit as exit_:  # --help, --print_config and jsonargparse's own exits
        return exit_.code if isinstance(exit_.code, int) else 0
    except StoppedBySignal as stop:
        return _stopped(stop, runs_before)
    except Exception as err:
        if not _trained():  # a failed start leaves nothing behind, whatever failed; a run that trained keeps its dir
            _remove_new_runs(runs_before)
        message = user_error(err, _run_dir())
        if message is None:
            raise
        print(f"seqstab.train: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return getattr(cli, "exit_code", 0)


def _stopped(stop: StoppedBySignal, runs_before: dict[str, set[Path]]) -> int:
    """A fit that trained ends with its closing lines and where its state is; a command stopped before that, with
    one line on stderr (and its run directory removed, as after any failed start)."""
    cli = SeqstabCLI.current
    trainer = getattr(cli, "trainer", None)
    if not _trained():
        _remove_new_runs(runs_before)
        print(f"seqstab.train: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    print_closing(trainer, cli.model, stopped=True)
    print_stopped(stop, trainer)
    return stop.exit_code


def _clipping_given(args: list[str], configs: dict[str, Any]) -> bool:
    """Whether the user set ``model.clipping``: on the command line, or in a config file of their own."""
    if any(arg.startswith(("--model.clipping", "--model.init_args.clipping")) for arg in args):
        return True
    for content in configs.values():
        model = content.get("model")
        if isinstance(model, dict) and ("clipping" in model or "clipping" in (model.get("init_args") or {})):
            return True
    return False


def _trained() -> bool:
    """Whether the CLI of this process got as far as an update (after which its run directory is the user's); a resume
    refused while its checkpoint is restored (the update count restored, no batch drawn yet) did not."""
    model = getattr(SeqstabCLI.current, "model", None)
    core = getattr(model, "core", None)
    loop = getattr(getattr(SeqstabCLI.current, "trainer", None), "fit_loop", None)
    drawn = loop is None or loop.epoch_loop.batch_progress.total.ready > 0
    return core is not None and core.updates > 0 and drawn


def _run_dir() -> Path | None:
    trainer = getattr(SeqstabCLI.current, "trainer", None)
    return run_dir(trainer) if trainer is not None else None


def _remove_new_runs(runs_before: dict[str, set[Path]]) -> None:
    for root, before in runs_before.items():
        remove_new_runs(before, root)


if __name__ == "__main__":
    sys.exit(main())
