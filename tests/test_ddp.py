"""Multi-process training on CPU (DDP over gloo), the way a user starts it: ``--trainer.devices 2 --trainer.strategy
ddp``. Each rank trains its own streams with its own carried hidden state; clip and guard decisions agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows
from datamodules.text import TextFiles
from seqstab.core.clipping import ZClip
from seqstab.core.guard import ExplosionGuard
from tests.helpers import scalars
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


def fit_on_two_processes(args: list[str], cwd) -> None:
    """``python -m seqstab.train fit`` on 2 CPU processes (DDP over gloo); a hang fails at the timeout."""
    fit = ["fit", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": python_path()}
    done = subprocess.run(
        [sys.executable, "-m", "seqstab.train", *fit, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_process_ddp_trains_disjoint_streams_with_identical_decisions(tmp_path, monkeypatch):
    write_text(tmp_path / "train.txt", 200, seed=0)
    write_text(tmp_path / "valid.txt", 30, seed=1)
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
    args = [
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "16", "--model.tbptt_steps", "4"],
        *["--model.clipping", "tests.test_ddp.RecordingZClip", "--model.clipping.warmup_steps", "2"],
        *["--model.clipping.z_thresh", "0.5"],  # clip often, so the decisions compared are not all "no"
        *["--model.guard", "tests.test_ddp.RecordingGuard", "--model.guard.snapshot", "false"],
        *["--model.guard.max_norm", "0.35"],  # flag (and skip) the larger norms (they are 0.3-0.45 here)
        *data,
        *["--trainer.max_steps", "10", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"],
        *["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "4"],
    ]
    fit_on_two_processes(args, tmp_path)

    clip = [read(tmp_path / f"clip-rank{r}.jsonl") for r in (0, 1)]
    guard = [read(tmp_path / f"guard-rank{r}.jsonl") for r in (0, 1)]
    updates = len(clip[0])
    assert updates == len(guard[0]) >= 10  # 10 applied, plus the skipped ones
    assert clip[0] == clip[1]  # all-reduced gradients: the same norms, thresholds and clip decisions on both ranks
    assert {c["clipped"] for c in clip[0]} == {True, False}
    decisions = [[(g["update"], g["action"]) for g in ranks] for ranks in guard]
    assert decisions[0] == decisions[1] and {a for _, a in decisions[0]} == {"step", "skip"}

    # each rank: its own half of the B streams, window after window, and its own carried hidden state
    monkeypatch.chdir(tmp_path)
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
    runs = tmp_path / "runs" / "seqstab"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    files = sorted(p.name.rsplit(".", 1)[-1] for p in runs.glob("version_0/events.out.tfevents.*"))
    assert len(files) == 2 and files[-1] == "scalars", files
    assert [s for s, _ in scalars(runs / "version_0")["train/loss"]] == list(range(updates))
    (ckpt,) = runs.glob("version_0/checkpoints/last.ckpt")
    ranks = torch.load(ckpt, weights_only=True)["seqstab"]["ranks"]
    assert len(ranks) == 2 and ranks[0]["carry"][0][0].shape == (1, 2, 16)
    assert not torch.equal(ranks[0]["carry"][0][0], ranks[1]["carry"][0][0])


def test_ddp_chunks_scored_on_one_rank_only_are_updates_on_every_rank(tmp_path):
    """A chunk with loss on one rank and none on the other is an update on both (or the rank with loss would wait
    in the gradient all-reduce forever); a chunk scored nowhere is skipped on both."""
    args = [
        *["--model", "seqstab.tasks.SequenceRegressor", "--model.net.hidden_size", "8", "--model.tbptt_steps", "4"],
        *["--model.guard", "tests.test_ddp.RecordingGuard", "--model.guard.snapshot", "false"],
        *["--data", "tests.test_ddp.RankScoredStreams", "--trainer.max_epochs", "1"],
        *["--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"],
    ]
    fit_on_two_processes(args, tmp_path)
    guard = [read(tmp_path / f"guard-rank{r}.jsonl") for r in (0, 1)]
    assert [[g["update"] for g in ranks] for ranks in guard] == [[0, 1, 2, 3]] * 2  # 2 windows x chunks 0 and 1
    assert [[g["action"] for g in ranks] for ranks in guard] == [["step"] * 4] * 2


@pytest.mark.parametrize("policy", ["VariableLength", "Unbiased"])
def test_ddp_ranks_cut_random_truncation_policies_alike(policy, tmp_path):
    """A policy that draws its cuts (variable length, random truncation) draws the same ones on every rank: a rank
    cutting elsewhere would update a different number of times and wait in the all-reduce forever, or train on
    windows the other rank does not."""
    write_text(tmp_path / "train.txt", 200, seed=0)
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
    args = [
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "8"],
        *["--model.truncation", f"seqstab.tbptt.{policy}", *draws, "--seed_everything", "3"],
        *["--model.guard", "tests.test_ddp.RecordingGuard", "--model.guard.snapshot", "false"],
        *data,
        *["--trainer.max_steps", "12", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"],
    ]
    fit_on_two_processes(args, tmp_path)
    lengths = [[len(g["x"][0]) for g in read(tmp_path / f"guard-rank{r}.jsonl")] for r in (0, 1)]
    assert lengths[0] == lengths[1] and len(lengths[0]) == 12
    assert len(set(lengths[0])) > 1, lengths  # the cuts were drawn, not fixed
