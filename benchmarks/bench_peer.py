"""Throughput against the real peer: pytorch/examples' ``word_language_model/main.py``, unmodified, run as a program,
against ``python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml``, on the same cut of WikiText-2.

    flock /work/heavy.lock python benchmarks/bench_peer.py          # ~15 min on 2 cores; --help for the knobs
    python benchmarks/bench_peer.py --profile --unfused --threads 1 --warmup 10 --updates 50 --every 10   # ~3 min

Both programs train the same model with the same settings: a 2×200 LSTM word LM (embedding 200, dropout 0.2 on the
embedding, between the layers and before the decoder; embedding and decoder U(±0.1), decoder bias 0), batch 20,
bptt 35, stateful, SGD lr 20, global-norm clipping at 0.25 of the token-mean loss, ``--threads`` torch threads
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``). The cut: the first lines of WikiText-2's ``train.txt`` holding enough
tokens for ``--warmup + --updates`` updates and a few more; ``valid.txt`` and ``test.txt`` are the first lines of that
cut (so evaluation is short and both programs see the same vocabulary: main.py builds it over the three files,
seqstab over ``train.txt``).

How an update is timed, the same way for both: the program prints a line every ``--every`` updates (main.py its own
``--log-interval`` line; seqstab a one-line callback of this file, ``UpdateMarks``, added with
``--trainer.callbacks+=``); on each line this process reads the wall clock and the child's CPU time (user + system,
all its threads: ``/proc/<pid>/stat``). The timed part runs from the mark after ``--warmup`` updates to the mark
``--updates`` later: start-up, vocabulary, validation and the checkpoint lie outside it. The whole process's CPU
time (``resource.getrusage(RUSAGE_CHILDREN)``) and wall time are printed beside it. Rounds alternate A B A B (who
goes first rotates each round), so a neighbour's burst on a shared machine falls on both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEER = REPO.parent / "shared" / "peers" / "pytorch-examples-word_language_model" / "main.py"
BATCH, BPTT = 20, 35
MARK = "seqstab-bench updates"  # UpdateMarks' line

try:  # the callback below is imported by the seqstab child, which needs Lightning; this parent does not
    import pytorch_lightning as pl

    _Callback = pl.Callback
except ImportError:  # pragma: no cover
    _Callback = object


class UpdateMarks(_Callback):
    """Prints ``seqstab-bench updates N`` (flushed) after every ``every``-th update: the marks the parent times."""

    def __init__(self, every: int = 50):
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        updates = pl_module.updates
        if updates % self.every == 0:
            print(f"{MARK} {updates}", flush=True)


def cut_corpus(source: Path, out: Path, tokens: int, eval_tokens: int) -> dict[str, int]:
    """The first lines of ``source/train.txt`` holding at least ``tokens`` tokens (``<eos>`` counted, as both
    programs count it) as ``out/train.txt``; its first ``eval_tokens`` as ``valid.txt`` and ``test.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    lines, count = [], 0
    with open(source / "train.txt", encoding="utf8") as f:
        for line in f:
            lines.append(line)
            count += len(line.split()) + 1
            if count >= tokens:
                break
    if count < tokens:
        raise SystemExit(f"{source / 'train.txt'}: {count:,} tokens, fewer than the {tokens:,} the timed part needs")
    (out / "train.txt").write_text("".join(lines), encoding="utf8")
    head, n = [], 0
    for line in lines:
        head.append(line)
        n += len(line.split()) + 1
        if n >= eval_tokens:
            break
    for split in ("valid", "test"):
        (out / f"{split}.txt").write_text("".join(head), encoding="utf8")
    types = {w for line in lines for w in line.split()} | {"<eos>"}
    return {"train_tokens": count, "eval_tokens": n, "vocab": len(types)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (``/proc/<pid>/stat`` fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_timed(cmd: list[str], env: dict, cwd: Path, mark: re.Pattern, log: Path) -> dict:
    """Run ``cmd``; at each stdout line matching ``mark`` (group 1: updates done) stamp wall clock and the child's
    CPU time. Returns the stamps and the whole process's wall and CPU (getrusage of children) seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    stamps: dict[int, tuple[float, float]] = {}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        lines = []
        for line in proc.stdout:
            found = mark.search(line)
            if found:
                with contextlib.suppress(OSError):
                    stamps[int(found.group(1))] = (time.perf_counter(), cpu_seconds(proc.pid))
            lines.append(line)
        proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = "".join(lines[-5:]) + log.read_text()[-3000:]
        raise SystemExit(f"{cmd[:4]}... exited {proc.returncode}:\n{tail}")
    return {"stamps": stamps, "wall": wall, "cpu": cpu}


def per_update(stamps: dict[int, tuple[float, float]], first: int, last: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per update between the marks after ``first`` and ``last`` updates."""
    if first not in stamps or last not in stamps:
        raise SystemExit(f"marks after {first} and {last} updates not seen (got {sorted(stamps)})")
    (w0, c0), (w1, c1) = stamps[first], stamps[last]
    return 1e3 * (w1 - w0) / (last - first), 1e3 * (c1 - c0) / (last - first)


def commands(args, data: Path, work: Path) -> dict[str, tuple[list[str], Path, re.Pattern]]:
    """Each program's command line, working directory and mark pattern (group 1: the mark's number N)."""
    peer = [
        sys.executable, str(args.peer), "--data", str(data), "--epochs", "1", "--log-interval", str(args.every),
        "--save", str(work / "model.pt"),
    ]  # fmt: skip
    seqstab = [
        sys.executable, "-m", "seqstab.train", "fit", "-c", str(REPO / "configs" / "lm" / "wikitext2_lstm.yaml"),
        "--data.data_dir", str(data), "--data.cache_dir", str(work / "cache"), "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(work / "runs"),
        "--trainer.callbacks+=bench_peer.UpdateMarks", "--trainer.callbacks.every", str(args.every),
        *args.seqstab_args,
    ]  # fmt: skip
    # main.py prints its line N after batch index N (N % interval == 0, N > 0), N + 1 updates done; seqstab's after
    # N updates: the span between two marks is the same number of updates in both
    programs = {
        "main.py": (peer, args.peer.parent, re.compile(r"\|\s+(\d+)/\s*\d+ batches")),
        "seqstab": (seqstab, REPO, re.compile(rf"{MARK} (\d+)")),
    }
    if args.unfused:
        programs["seqstab unfused"] = (
            [*seqstab, "--model.init_args.fused_loss", "false"],
            REPO,
            programs["seqstab"][2],
        )
    return programs


PROFILE = """
import runpy, sys, torch
from torch.profiler import ProfilerActivity, profile
target, out, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = [target, *sys.argv[4:]]
with profile(activities=[ProfilerActivity.CPU]) as prof:
    try:
        if target.endswith(".py"):
            sys.path.insert(0, target.rsplit("/", 1)[0])
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
open(out, "w").write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
"""


def profile_programs(args, programs: dict, work: Path, env: dict) -> None:
    """Each program once under ``torch.profiler`` (CPU), the whole run: the top operators by self CPU time."""
    for name, (cmd, cwd, _mark) in programs.items():
        out = work / f"profile-{name.replace(' ', '_')}.txt"
        target = cmd[1] if cmd[1] != "-m" else cmd[2]
        rest = cmd[2:] if cmd[1] != "-m" else cmd[3:]
        subprocess.run([sys.executable, "-c", PROFILE, target, str(out), str(args.top), *rest], cwd=cwd, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)  # fmt: skip
        print(f"\n{name}: top operators by self CPU time, whole run (start-up and validation included)")
        print(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each one run of both programs (A B, B A, ...)")
    parser.add_argument("--updates", type=int, default=300, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=50, help="updates before the timed part (a multiple of every)")
    parser.add_argument("--every", type=int, default=50, help="a mark every this many updates")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both programs")
    parser.add_argument("--data-dir", type=Path, help="WikiText-2 train.txt (default: ../shared/data/wikitext-2)")
    parser.add_argument("--peer", type=Path, default=PEER, help="pytorch/examples word_language_model/main.py")
    parser.add_argument("--unfused", action="store_true", help="a third program: seqstab with fused_loss false")
    parser.add_argument("--profile", action="store_true", help="each program once under torch.profiler instead")
    parser.add_argument("--top", type=int, default=20, help="operators shown by --profile")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("seqstab_args", nargs="*", help="more arguments for seqstab.train (after --)")
    args = parser.parse_args(argv)
    if args.warmup % args.every or args.updates % args.every:
        parser.error("--warmup and --updates must be multiples of --every")
    sys.path.insert(0, str(BENCH))
    import _common
    import torch

    torch.set_num_threads(args.threads)
    source = _common.wikitext2_dir(str(args.data_dir) if args.data_dir else None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    first, last = args.warmup, args.warmup + args.updates
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        work = Path(tmp)
        data = work / "wikitext-2-cut"
        cut = cut_corpus(source, data, (last + 5) * BATCH * BPTT + BATCH, eval_tokens=4 * 10 * BPTT)
        print(f"machine: {_common.machine()}")
        print(f"peer: {args.peer} (unmodified); {torch.get_num_threads()} threads each (OMP/MKL_NUM_THREADS)")
        print(
            f"data: first {cut['train_tokens']:,} tokens of {source / 'train.txt'} ({cut['vocab']:,} types); "
            f"valid = test = its first {cut['eval_tokens']:,}; timed: updates {first}..{last} of each run"
        )
        programs = commands(args, data, work)
        for name, (cmd, *_rest) in programs.items():
            print(f"{name}: {' '.join(cmd)}")
        if args.profile:
            profile_programs(args, programs, work, env)
            return
        results: dict[str, list[dict]] = {name: [] for name in programs}
        names = list(programs)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                cmd, cwd, mark = programs[name]
                out = run_timed(cmd, env, cwd, mark, work / f"{name}-{r}.log")
                stamps = out["stamps"]
                wall, cpu = per_update(stamps, first, last)
                laps = [per_update(stamps, n, n + args.every)[0] for n in range(first, last, args.every)]
                results[name].append({**out, "stamps": None, "ms": wall, "cpu_ms": cpu, "laps": laps})
                print(
                    f"round {r + 1} {name}: {wall:.1f} ms/update wall, {cpu:.1f} ms CPU; whole process "
                    f"{out['wall']:.1f} s wall, {out['cpu']:.1f} s CPU; laps of {args.every}: "
                    + ", ".join(f"{x:.0f}" for x in laps),
                    flush=True,
                )
    report(results, args, cut)


def report(results: dict[str, list[dict]], args, cut: dict) -> None:
    import _common
    import torch

    peak = _common.matmul_gflops()
    flops = 3 * (2 * 2 * 4 * 200 * 400 + 2 * 200 * cut["vocab"]) * BATCH * BPTT  # per update: bench_throughput's count
    peer = results["main.py"]
    print(f"\n{args.rounds} rounds, {args.updates} timed updates each ({args.updates * BATCH * BPTT:,} tokens)")
    print(f"matmul peak (float32 2048² torch.mm, best of 10, {torch.get_num_threads()} threads): {peak:,.0f} GFLOP/s")
    print(
        "| program | ms/update wall: median (min–max) | CPU ms/update | whole process wall s | whole process CPU s "
        "| effective GFLOP/s | % of matmul peak |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        gflops = flops / _common.median([r["ms"] for r in runs]) / 1e6
        print(
            f"| {name} | {_spread([r['ms'] for r in runs])} | {_spread([r['cpu_ms'] for r in runs])} "
            f"| {_spread([r['wall'] for r in runs], 1)} | {_spread([r['cpu'] for r in runs], 1)} "
            f"| {gflops:.1f} | {100 * gflops / peak:.0f}% |"
        )
    ratios = {}
    for name, ours in list(results.items())[1:]:
        wall_ratio = [p["ms"] / s["ms"] for p, s in zip(peer, ours, strict=True)]  # > 1: seqstab faster
        cpu_ratio = [s["cpu_ms"] / p["cpu_ms"] for p, s in zip(peer, ours, strict=True)]  # < 1: seqstab cheaper
        ratios[name] = {"wall": wall_ratio, "cpu": cpu_ratio}
        print(
            f"{name}: speed, main.py ms / its ms (≥ 1: as fast or faster): median {_common.median(wall_ratio):.3f}, "
            f"per round {', '.join(f'{x:.3f}' for x in wall_ratio)}; CPU per update, its / main.py's (≤ 1: as cheap "
            f"or cheaper): median {_common.median(cpu_ratio):.3f}, per round {', '.join(f'{x:.3f}' for x in cpu_ratio)}"
        )
    print(
        "settings that differ: seqstab logs every update to TensorBoard (loss, pre/post-clip norm, clip flag, "
        "threshold, lr; per-module norms and gradient flow every 50th, the monitor's default) and shows its progress "
        f"bar (stderr); main.py prints a line every {args.every} batches (its default: 200). main.py keeps the batch "
        "sequence-first (L, B), seqstab batch-first (B, L); main.py's loss is log_softmax + NLLLoss, seqstab's "
        "cross-entropy (fused with the decoder where model.fused_loss is on); main.py's SGD step is p.data.add_ per "
        "parameter, seqstab's torch.optim.SGD. Seeds differ (1111, 0). Outside the timed part: main.py validates "
        "at the epoch's end and saves model.pt; seqstab also runs 2 sanity validation batches and saves a checkpoint."
    )
    if args.json:
        figures = {"cut": cut, "rounds": args.rounds, "updates": args.updates, "warmup": args.warmup,
                   "matmul_peak_gflops": peak, "ratios": ratios, "runs": results}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=1))


def _spread(values: list[float], digits: int = 1) -> str:
    med = sorted(values)[len(values) // 2] if len(values) % 2 else sum(sorted(values)[len(values) // 2 - 1 :][:2]) / 2
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


if __name__ == "__main__":
    main()
