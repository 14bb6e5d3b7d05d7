"""Multi-process training on CPU (DDP over gloo), the way a user starts it: ``--trainer.devices 2 --trainer.strategy
ddp``. Each rank trains its own streams with its own carried hidden state; clip and guard decisions agree."""

from __future__ import annotations

import functools
import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows
from datamodules.text import TextFiles
from seqstab.core.clipping import ZClip
from seqstab.core.guard import ExplosionGuard
from tests.helpers import Started, asked_for, scalars
from tests.test_resume import python_path, write_text

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


def _log(kind: str, record: dict) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{kind}-rank{rank}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


class RecordingZClip(ZClip):
    """ZClip that writes what it decided at every update to ``clip-rank<r>.jsonl`` (a host sync: tests only)."""

    def clip(self, params):
        result = super().clip(params)
        threshold = None if result.threshold is None else result.threshold.item()
        _log("clip", {"pre": result.pre_norm.item(), "clipped": bool(result.clipped), "threshold": threshold})
        return result


class RecordingGuard(ExplosionGuard):
    """ExplosionGuard that writes each decision, and the streams the update trained on, to ``guard-rank<r>.jsonl``
    (when the update core reads its decisions back, in update order)."""

    def settle(self, run, update, read):
        action = super().settle(run, update, read)
        hidden = update.hidden_in[0][0] if update.hidden_in is not None else None  # layer 0's h: (1, B, H)
        _log(
            "guard",
            {
                "update": update.step,
                "action": action.value,
                "x": update.chunk["x"].tolist(),  # (B / W, k) token ids of this rank's streams
                "hidden": None if hidden is None else hidden.sum().item(),
            },
        )
        return action


class RankScoredStreams(SeqDataModule):
    """4 streams of 24 steps read in windows of 12 (chunks of 4 under ``tbptt_steps: 4``). Rank 0's streams are
    scored in each window's first two chunks, rank 1's in its first only; no stream is scored in the third."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(4, 24, 1, generator=g), torch.randn(4, 24, 1, generator=g)
        mask = torch.zeros(4, 24, dtype=torch.bool)
        for start in (0, 12):
            mask[:2, start : start + 8] = True  # rank 0: chunks 0 and 1
            mask[2:, start : start + 4] = True  # rank 1: chunk 0
        return DataLoader(StreamWindows(x, y, 12, mask), batch_size=None)

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="regression", input_size=1, output_size=1, stateful=True)


def start_on_two_processes(args: list[str], cwd) -> Started:
    """``python -m seqstab.train fit`` on 2 CPU processes (DDP over gloo), started; a hang fails at the timeout."""
    fit = ["fit", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": python_path()}
    return Started([sys.executable, "-m", "seqstab.train", *fit, *args], cwd=cwd, env=env, timeout=150)


def fit_on_two_processes(run: Started):
    """The folder of a run :func:`start_on_two_processes` started, once it has ended well."""
    done = run.result()
    assert done.returncode == 0, done.stderr[-3000:]
    return run.cwd


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def disjoint_streams(cwd) -> list[str]:
    write_text(cwd / "train.txt", 200, seed=0)
    write_text(cwd / "valid.txt", 30, seed=1)
    data = ["--data", "datamodules.text.TextFiles", "--data.train", "train.txt", "--data.valid", "valid.txt"]
    data += [
        "--data.batch_size",
        "4",
        "--data.eval_batch_size",
        "2",
        "--data.seq_len",
        "8",
        "--data.cache_dir",
        "cache",
    ]
    return [
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "16", "--model.tbptt_steps", "4"],
        *["--model.clipping", "tests.test_ddp.RecordingZClip", "--model.clipping.warmup_steps", "2"],
        *["--model.clipping.z_thresh", "0.5"],  # clip often, so the decisions compared are not all "no"
        *["--model.guard", "tests.test_ddp.RecordingGuard", "--model.guard.snapshot", "false"],
        *["--model.guard.max_norm", "0.35"],  # flag (and skip) the larger norms (they are 0.3-0.45 here)
        *data,
        *["--trainer.max_steps", "10", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"],
        *["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "4"],
    ]


def scored_on_one_rank(cwd) -> list[str]:
    return [
        *["--model", "seqstab.tasks.SequenceRegressor", "--model.net.hidden_size", "8", "--model.tbptt_steps", "4"],
        *["--model.guard", "tests.test_ddp.RecordingGuard", "--model.guard.snapshot", "false"],
        *["--data", "tests.test_ddp.RankScoredStreams", "--trainer.max_epochs", "1"],
        *["--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"],
    ]


def random_cuts(policy: str, cwd) -> list[str]:
    write_text(cwd / "train.txt", 200, seed=0)
    data = ["--data", "datamodules.text.TextFiles", "--data.train", "train.txt", "--data.valid", "train.txt"]
    data += ["--data.batch_size", "4", "--data.seq_len", "16", "--data.cache_dir", "cache"]
    draws = {
        "VariableLength": [
            "--model.truncation.k",
            "6",
            "--model.truncation.sigma",
            "3",
            "--model.truncation.min_len",
            "1",
        ],
        "Unbiased": ["--model.truncation.c", "0.3"],
    }[policy]
    return [
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "8"],
        *["--model.truncation", f"seqstab.tbptt.{policy}", *draws, "--seed_everything", "3"],
        *["--model.guard", "tests.test_ddp.RecordingGuard", "--model.guard.snapshot", "false"],
        *data,
        *["--trainer.max_steps", "12", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"],
    ]


RUNS = {  # each test's run: its command line, its data written into its folder
    "disjoint": disjoint_streams,
    "scored": scored_on_one_rank,
    "VariableLength": functools.partial(random_cuts, "VariableLength"),
    "Unbiased": functools.partial(random_cuts, "Unbiased"),
}


class Started2AtATime:
    """The runs of :data:`RUNS`, in order, two at a time, started when this module starts. A DDP run keeps about one
    core busy (rank 1 starts, and imports, once rank 0 has imported and set up): two share the two cores."""

    def __init__(self, tmp_path_factory):
        self.folder, self.todo, self.runs = tmp_path_factory.mktemp, list(RUNS), {}
        self._fill()

    def __getitem__(self, name: str) -> Started:
        if name not in self.runs:  # asked for out of order (a test chosen with -k)
            self.todo.remove(name)
            self._start(name)
        self.runs[name].result()
        self._fill()
        return self.runs[name]

    def _fill(self) -> None:
        while self.todo and sum(run.proc.poll() is None for run in self.runs.values()) < 2:
            self._start(self.todo.pop(0))

    def _start(self, name: str) -> None:
        cwd = self.folder(name)
        self.runs[name] = start_on_two_processes(RUNS[name](cwd), cwd)

    def stop(self) -> None:
        for run in self.runs.values():
            run.stop()


@pytest.fixture(scope="module", autouse=True)
def started(request, tmp_path_factory):
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    runs = Started2AtATime(tmp_path_factory)
    yield runs
    runs.stop()


def test_two_process_ddp_trains_disjoint_streams_with_identical_decisions(started, monkeypatch):
    cwd = fit_on_two_processes(started["disjoint"])

    clip = [read(cwd / f"clip-rank{r}.jsonl") for r in (0, 1)]
    guard = [read(cwd / f"guard-rank{r}.jsonl") for r in (0, 1)]
    updates = len(clip[0])
    assert updates == len(guard[0]) >= 10  # 10 applied, plus the skipped ones
    assert clip[0] == clip[1]  # all-reduced gradients: the same norms, thresholds and clip decisions on both ranks
    assert {c["clipped"] for c in clip[0]} == {True, False}
    decisions = [[(g["update"], g["action"]) for g in ranks] for ranks in guard]
    assert decisions[0] == decisions[1] and {a for _, a in decisions[0]} == {"step", "skip"}

    # each rank: its own half of the B streams, window after window, and its own carried hidden state
    monkeypatch.chdir(cwd)
    reference = TextFiles("train.txt", "valid.txt", batch_size=4, seq_len=8, cache_dir="cache").windows("train", 4)
    for rank in (0, 1):
        rows = slice(2 * rank, 2 * rank + 2)
        for update in (0, 1, 2, 3):  # batch 0: chunks 0, 1; batch 1: chunks 0, 1
            batch, chunk = divmod(update, 2)
            expected = reference[batch]["x"][rows, 4 * chunk : 4 * chunk + 4]
            assert torch.equal(torch.tensor(guard[rank][update]["x"]), expected), (rank, update)
    assert guard[0][2]["hidden"] != guard[1][2]["hidden"]  # carried across the batch boundary, per rank

    # logged once: one run directory, rank 0's event files only (the logger's, and seqstab's per-update scalars);
    # the checkpoint holds both ranks' hidden states
    runs = cwd / "runs" / "seqstab"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    files = sorted(p.name.rsplit(".", 1)[-1] for p in runs.glob("version_0/events.out.tfevents.*"))
    assert len(files) == 2 and files[-1] == "scalars", files
    assert [s for s, _ in scalars(runs / "version_0")["train/loss"]] == list(range(updates))
    (ckpt,) = runs.glob("version_0/checkpoints/last.ckpt")
    ranks = torch.load(ckpt, weights_only=True)["seqstab"]["ranks"]
    assert len(ranks) == 2 and ranks[0]["carry"][0][0].shape == (1, 2, 16)
    assert not torch.equal(ranks[0]["carry"][0][0], ranks[1]["carry"][0][0])


def test_ddp_chunks_scored_on_one_rank_only_are_updates_on_every_rank(started):
    """A chunk with loss on one rank and none on the other is an update on both (or the rank with loss would wait
    in the gradient all-reduce forever); a chunk scored nowhere is skipped on both."""
    cwd = fit_on_two_processes(started["scored"])
    guard = [read(cwd / f"guard-rank{r}.jsonl") for r in (0, 1)]
    assert [[g["update"] for g in ranks] for ranks in guard] == [[0, 1, 2, 3]] * 2  # 2 windows x chunks 0 and 1
    assert [[g["action"] for g in ranks] for ranks in guard] == [["step"] * 4] * 2


@pytest.mark.parametrize("policy", ["VariableLength", "Unbiased"])
def test_ddp_ranks_cut_random_truncation_policies_alike(policy, started):
    """A policy that draws its cuts (variable length, random truncation) draws the same ones on every rank: a rank
    cutting elsewhere would update a different number of times and wait in the all-reduce forever, or train on
    windows the other rank does not."""
    cwd = fit_on_two_processes(started[policy])
    lengths = [[len(g["x"][0]) for g in read(cwd / f"guard-rank{r}.jsonl")] for r in (0, 1)]
    assert lengths[0] == lengths[1] and len(lengths[0]) == 12
    assert len(set(lengths[0])) > 1, lengths  # the cuts were drawn, not fixed
