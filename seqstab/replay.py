"""``python -m seqstab.replay RUN_DIR/snapshot_update_<N>.pt``: recompute the update the explosion guard flagged.

The snapshot (written by :class:`seqstab.guard.ExplosionGuard` at its first event) holds the model and optimizer
state, the exact chunk (``x``, ``y``, ``mask``), the hidden state it started from and the RNG state before its
forward pass. Replay rebuilds the task from its class path and hyperparameters (no data needed), runs the same
forward and backward as ``SeqTask.training_step`` and prints the pre-clip gradient norm, the norm the run logged,
whether the two are bitwise equal (on CPU, with the run's thread count, they are) and the per-parameter breakdown.

    python -m seqstab.replay runs/seqstab/version_0/snapshot_update_5.pt
"""

from __future__ import annotations

import argparse
import importlib
import math
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from datamodules.base import DataSpec
from seqstab.clipping import global_norm, grads_of
from seqstab.errors import ConfigError, DataError, SeqstabError
from seqstab.guard import SNAPSHOT_FORMAT, grad_norms


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Load a snapshot safely (``weights_only=True``); a missing, truncated or foreign file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"snapshot {path}: no such file")
    try:
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, tampered pickle, unsafe globals
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"snapshot {path}: cannot be loaded safely ({type(err).__name__}: {reason})") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        raise DataError(f"snapshot {path}: not a seqstab replay snapshot (format {SNAPSHOT_FORMAT!r} expected)")
    return snapshot


def rebuild_task(snapshot: dict[str, Any]) -> torch.nn.Module:
    """The task of the snapshot, built from its class path and hyperparameters, with its weights loaded."""
    from seqstab.tasks import SeqTask

    class_path = snapshot["task_class"]
    hparams = snapshot.get("hparams")
    if hparams is None:
        raise ConfigError(f"snapshot task {class_path}: its hyperparameters are not plain values; cannot rebuild it")
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"snapshot task {class_path}: cannot import it ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, SeqTask)):
        raise ConfigError(f"snapshot task {class_path}: not a seqstab.tasks.SeqTask")
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}  # LightningCLI's _class_path, _instantiator
    if isinstance(hparams.get("spec"), dict):
        spec = dict(hparams["spec"])
        if spec.get("target_scale") is not None:
            spec["target_scale"] = tuple(spec["target_scale"])
        hparams["spec"] = DataSpec(**spec)
    task = cls(**hparams)
    task.load_state_dict(snapshot["state_dict"])
    return task


def replay(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Recompute the snapshot's update: its loss, pre-clip global gradient norm and per-parameter norms.

    Runs with the run's thread count and RNG state; the caller's thread count and RNG state are restored after.
    """
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            if snapshot.get("num_threads"):
                torch.set_num_threads(int(snapshot["num_threads"]))  # CPU kernels' summation order follows it
            task = rebuild_task(snapshot)
            task.train()
            rng = snapshot.get("rng") or {}
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])  # the dropout masks of the original forward
            chunk = snapshot["chunk"]
            out, _ = task(chunk["x"], snapshot.get("hidden_in"))  # the forward of SeqTask.training_step
            loss = task.reduce_loss(task.step_losses(out, chunk)["loss"], chunk.get("mask"))
            loss.backward()
            params = [p for p in task.parameters() if p.requires_grad]
            norm = global_norm(grads_of(params)).item()  # what every clipping policy reports as pre_norm
            return {"loss": loss.item(), "norm": norm, "grad_norms": grad_norms(task)}
    finally:
        torch.set_num_threads(threads)


def same_bits(a: float | None, b: float | None) -> bool:
    """Bitwise equality of two float32 values (nan equals nan with the same payload)."""
    if a is None or b is None:
        return False
    return struct.pack("<f", a) == struct.pack("<f", b)


def report(path: Path, snapshot: dict[str, Any], result: dict[str, Any]) -> str:
    logged = snapshot["logged"]["grad/norm_total"]
    seed = snapshot.get("seed")
    lines = [
        f"snapshot: {path}",
        f"update {snapshot['update']} (optimizer step {snapshot['global_step']}, epoch {snapshot['epoch']}), "
        f"seed {seed}, trained on {snapshot.get('device', '?')} with {snapshot.get('num_threads', '?')} threads",
        f"task: {snapshot['task_class']}",
        f"loss:                   replayed {result['loss']!r}   logged {snapshot['logged'].get('train/loss')!r}",
        f"pre-clip gradient norm: replayed {result['norm']!r}   logged {logged!r}",
    ]
    if same_bits(result["norm"], logged):
        lines.append("replayed norm == logged norm (bitwise)")
    else:
        lines.append(
            "replayed norm != logged norm: expected only across devices, thread counts or library versions "
            f"(run: torch {snapshot.get('versions', {}).get('torch')}, now: torch {torch.__version__})"
        )
    norms = result["grad_norms"]
    total = sum(n * n for n in norms.values() if math.isfinite(n)) or 1.0
    width = max((len(name) for name in norms), default=10)
    lines.append("per-parameter gradient norms (pre-clip), largest first:")
    for name, n in sorted(norms.items(), key=lambda item: -item[1] if not math.isnan(item[1]) else -math.inf):
        share = f"{100 * n * n / total:6.2f}%" if math.isfinite(n) else "      "
        lines.append(f"  {name:<{width}}  {n:.6e}  {share}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqstab.replay",
        description="Recompute the gradient of the update an explosion guard snapshot captured.",
    )
    parser.add_argument("snapshot", type=Path, help="RUN_DIR/snapshot_update_<N>.pt")
    args = parser.parse_args(argv)
    try:
        snapshot = load_snapshot(args.snapshot)
        result = replay(snapshot)
    except SeqstabError as err:
        print(f"seqstab.replay: error: {err}", file=sys.stderr)
        return 2
    print(report(args.snapshot, snapshot, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
