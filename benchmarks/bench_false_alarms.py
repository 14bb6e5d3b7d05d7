"""False alarms of the explosion guard's spike rule on healthy runs, and the planted spikes it must still catch: the
same recorded norm series put through the rule of whichever seqstab is imported, so two versions compare exactly.

    python benchmarks/bench_false_alarms.py --collect runs.json                  # train, record (~15 min, 2 cores)
    python benchmarks/bench_false_alarms.py --series runs.json                   # this checkout's rule
    PYTHONPATH=../main:. python benchmarks/bench_false_alarms.py --series runs.json   # main's rule, same norms
    python benchmarks/bench_false_alarms.py --series runs.json --series peers.json    # + the libraries' models

``--collect`` trains every shipped config for ``--steps`` updates (offline: ``tests/data_paths.py`` points each at
``../shared/data``; ``--trainer.limit_val_batches 2``), under ``ExplosionGuard(policy="warn", snapshot=False)`` so
that no decision of the rule changes what is trained (a withheld non-finite update aside), and records each run's
pre-clip norm series (``grad/norm_total``, read back with TensorBoard's reader). ``configs/lm``,
``configs/timeseries`` and ``configs/synthetic`` are the healthy runs; ``configs/explode`` are the runs that explode
(a vanilla RNN with SGD and no clipping) or hold a planted cause (``cause_data.yaml``: batch 8 scaled by 10^4).
``bench_callback_peers.py --norms peers.json`` records the libraries' models the same way (``healthy/<model>``) and
their planted spikes (``spike/<model>``).

Then each series goes through ``ExplosionGuard(policy="warn", snapshot=False).check`` norm by norm (the same decision
the guard takes on the device, read at once), counting spike events. Printed per run: updates, spikes flagged
(healthy runs: every one a false alarm; under ``policy="skip"`` each would have been a skipped update) and the
updates flagged; for the exploding and planted runs the first update flagged, which must not move.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

from seqstab.core.guard import ExplosionGuard

REPO = _common.REPO
HEALTHY = ("lm", "timeseries", "synthetic")
PLANTED = ("explode",)
GUARD = ["--model.guard", "seqstab.guard.ExplosionGuard", "--model.guard.policy", "warn"]
GUARD += ["--model.guard.snapshot", "false", "--model.guard.max_consecutive_skips", "1000000"]


def collect(steps: int, timeout: float) -> dict[str, list[float]]:
    """Train every shipped config (offline) for ``steps`` updates; ``{"<folder>/<config>": norms}``."""
    sys.path.insert(0, str(REPO))
    from tests.data_paths import config_overrides

    series: dict[str, list[float]] = {}
    configs = sorted(p for folder in (*HEALTHY, *PLANTED) for p in (REPO / "configs" / folder).glob("*.yaml"))
    for config in configs:
        name = f"{config.parent.name}/{config.stem}"
        with tempfile.TemporaryDirectory() as tmp:
            args = [sys.executable, "-m", "seqstab.train", "fit", "--config", str(config), *config_overrides(config)]
            args += [*GUARD, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "2"]
            args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
            env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            start = time.perf_counter()
            try:
                done = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                print(f"{name}: more than {timeout:.0f} s, left out", flush=True)
                continue
            runs = sorted(Path(tmp).rglob("events.out.tfevents.*"))
            if not runs:
                print(f"{name}: no run ({(done.stderr.strip().splitlines() or ['?'])[-1][:200]})", flush=True)
                continue
            series[name] = norms_of(runs[0].parent)
            print(f"{name}: {len(series[name])} updates in {time.perf_counter() - start:.0f} s", flush=True)
    return series


def norms_of(log_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("grad/norm_total"), key=lambda e: e.step)]


def flagged(norms: list[float]) -> list[int]:
    """The updates the rule flags as spikes, the series put through the guard one norm at a time."""
    guard = ExplosionGuard(policy="warn", snapshot=False, diagnose=False, max_consecutive_skips=None)
    out = []
    for i, norm in enumerate(norms):
        reason, _ = guard.detect(norm)
        guard.check(None, norm)
        if reason == "spike":
            out.append(i)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collect", type=Path, help="train the shipped configs and write their norms here (JSON)")
    parser.add_argument("--series", type=Path, action="append", default=[], help="norm series to judge (JSON)")
    parser.add_argument("--steps", type=int, default=300, help="updates per config when collecting")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per config when collecting")
    args = parser.parse_args(argv)
    if args.collect:
        args.collect.write_text(json.dumps(collect(args.steps, args.timeout)))
        args.series.append(args.collect)
    import seqstab

    print(f"machine: {_common.machine()}")
    print(f"the rule of seqstab at {Path(seqstab.__file__).parent}\n")
    series: dict[str, list[float]] = {}
    for path in args.series:
        series.update(json.loads(path.read_text()))
    print("| run | updates | spikes flagged | rate | updates flagged (first 8) |")
    print("|---|---:|---:|---:|---|")
    totals = {"healthy": [0, 0], "planted": [0, 0]}
    for name in sorted(series):
        norms = series[name]
        hits = flagged(norms)
        kind = "planted" if name.split("/")[0] in (*PLANTED, "spike") else "healthy"
        totals[kind][0] += len(norms)
        totals[kind][1] += len(hits)
        rate = f"{len(hits) / len(norms):.2%}" if norms else "n/a"
        print(f"| {name} | {len(norms)} | {len(hits)} | {rate} | {', '.join(map(str, hits[:8]))} |")
    updates, hits = totals["healthy"]
    print(f"\nhealthy runs: {hits} spikes flagged in {updates} updates ({hits / max(updates, 1):.3%})")


if __name__ == "__main__":
    main()
