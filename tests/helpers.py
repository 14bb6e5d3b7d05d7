"""Small shared pieces for tests: a tiny stream datamodule, recording stations, a quiet Trainer, CLI runs."""

from __future__ import annotations

import inspect
import locale
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows
from seqstab.core.clipping import ClipResult, NoClip
from seqstab.core.guard import ExplosionGuard

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


class TinyStream(SeqDataModule):
    """``num_streams`` random real-valued streams, read in windows of ``window`` steps (stateful)."""

    def __init__(self, num_streams=3, length=24, window=8, input_size=2, stateful=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_streams, length, input_size, generator=g)  # (B, N, F)
        self.y = torch.randn(num_streams, length, 1, generator=g)  # (B, N, 1)
        self.window, self.stateful, self.input_size = window, stateful, input_size

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="regression", input_size=self.input_size, output_size=1, stateful=self.stateful)

    def train_dataloader(self):
        return DataLoader(StreamWindows(self.x, self.y, self.window), batch_size=None)

    def val_dataloader(self):
        return DataLoader(StreamWindows(self.x, self.y, self.window), batch_size=None)


class RecordingClip(NoClip):
    """NoClip that keeps a copy of the gradients it was handed at every update."""

    def __init__(self):
        self.grads: list[list[torch.Tensor]] = []

    def clip(self, params) -> ClipResult:
        self.grads.append([p.grad.detach().clone() for p in params])
        return super().clip(params)


class RecordingGuard(ExplosionGuard):
    """Never flags; keeps each update's starting hidden state."""

    def __init__(self):
        super().__init__(spike_factor=None)
        self.hidden_in = []

    def decide(self, run, update, overflow_possible=False):
        self.hidden_in.append(update.hidden_in)
        return super().decide(run, update, overflow_possible)


class FlagAt(ExplosionGuard):
    """Flags exactly one update, ``at``, as an event (a planted spike), whatever its norm."""

    def __init__(self, at: int, policy: str = "warn"):
        super().__init__(policy=policy, snapshot=True)
        self.at = at

    def decide(self, run, update, overflow_possible=False):
        verdict = super().decide(run, update, overflow_possible)
        if update.step == self.at:
            device = verdict.reason.device
            verdict.reason = torch.tensor(3, device=device)
            verdict.action = torch.tensor(0 if self.policy == "warn" else 1, device=device)
            verdict.apply = verdict.action == 0
        return verdict


def quiet_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    return pl.Trainer(**{**defaults, **kwargs})


def run_cli(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m seqstab.train ARGS`` the way a user does (warnings off unless ``PYTHONWARNINGS`` is given;
    ``env``: more environment variables)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **env}
    return subprocess.run(
        [sys.executable, "-m", "seqstab.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, cwd: Path, timeout: float = 300, **env: str) -> Started:
    """:func:`run_cli`, started: the run goes on in the background until a test asks for its ``result()``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **env}
    return Started([sys.executable, "-m", "seqstab.train", *args], cwd=cwd, env=env, timeout=timeout)


class Started:
    """A command started in the background: ``result()`` waits for it and is what ``subprocess.run(...,
    capture_output=True, text=True, timeout=timeout)`` would have returned, the timeout counted from the start.

    A command takes seconds importing torch and Lightning, on one core: started before the test that reads it, it
    runs on the other core beside this process's in-process tests (a module-scoped fixture starts them). Its output
    goes to files (a pipe nobody reads would stall it once full)."""

    def __init__(self, cmd: list[str], cwd: Path | None, env: dict[str, str] | None = None, timeout: float = 300):
        self.cmd, self.cwd, self.deadline = cmd, cwd, time.monotonic() + timeout
        (out, self.out), (err, self.err) = tempfile.mkstemp(), tempfile.mkstemp()
        try:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        finally:
            os.close(out)  # the child has its own
            os.close(err)
        self.done: subprocess.CompletedProcess | None = None

    def result(self) -> subprocess.CompletedProcess:
        if self.done is None:
            try:
                code = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop()
                raise
            self.done = subprocess.CompletedProcess(self.cmd, code, self._text(self.out), self._text(self.err))
        return self.done

    def stop(self) -> None:
        """End it if it still runs (a module's teardown: the test that would have read it failed or was not run)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for path in (self.out, self.err):
            Path(path).unlink(missing_ok=True)

    @staticmethod
    def _text(path: str) -> str:
        text = Path(path).read_bytes().decode(locale.getpreferredencoding(False))
        Path(path).unlink()
        return text.replace("\r\n", "\n").replace("\r", "\n")  # text=True's universal newlines


def asked_for(request) -> bool:
    """Whether a test this session runs names the calling fixture among its parameters. The module fixtures that
    start runs are autouse, so that the runs start with the module; a ``-k`` or a test id that selects none of their
    readers then starts none of them (``if not asked_for(request): yield None; return``)."""
    return any(
        getattr(item, "module", None) is request.module  # (a doctest item has none)
        and request.fixturename in inspect.signature(item.function).parameters
        for item in request.session.items
    )


def until_teardown(runs: Started | dict[str, Started]):
    """A module-scoped fixture's ``yield from``: the started run (or runs, by name) to its tests, then each one still
    running stopped at teardown (a test that would have read it failed, or was not selected)."""
    yield runs
    for run in runs.values() if isinstance(runs, dict) else [runs]:
        run.stop()


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run directory's TensorBoard events, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class Plain(pl.LightningModule):
    """A plain module trained with automatic optimization, the callback's door (tests/test_host_sync.py and the GPU's
    benchmarks/gpu/sync_check.py count its host reads)."""

    def __init__(self):
        super().__init__()
        self.lstm, self.out = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.out(self.lstm(x)[0][:, -1]), y)

    def configure_optimizers(self):  # momentum: a withheld update restored on the device (state and all)
        return torch.optim.SGD(self.parameters(), lr=1e-2, momentum=0.9)
