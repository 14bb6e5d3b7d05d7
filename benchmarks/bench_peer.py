"""Throughput against the real peer: pytorch/examples' ``word_language_model/main.py``, unmodified, run as a program,
against ``python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml``, on the same files, in four settings.

    flock /work/heavy.lock python benchmarks/bench_peer.py          # all four settings, 3 rounds: ~25-30 min on 2 cores
    python benchmarks/bench_peer.py --settings floor --rounds 5     # one setting
    python benchmarks/bench_peer.py --settings floor --floor-bare   # + seqstab, bar, logger, checkpoints, clip off
    python benchmarks/bench_peer.py --settings char --lightning-floor   # + Lightning's floor beside main.py in char
    python benchmarks/bench_peer.py --profile --unfused --threads 1 --warmup 10 --updates 50 --every 10 \\
        --settings wt2-33k                                          # torch.profiler, ~3 min
    python benchmarks/bench_peer.py --profile --profile-updates 40:60 --settings char --cell gru   # those updates only
    python benchmarks/bench_peer.py --device cuda --settings wt2-33k --fused-loss true --unfused --rounds 2 \\
        [--hidden 1500]                                             # on a GPU (benchmarks/gpu_check.sh's peer_* steps)

Both programs train the same model with the same settings: a 2-layer LSTM word LM (embedding = hidden, 200 units
unless the setting says otherwise; dropout 0.2 on the embedding, between the layers and before the decoder; embedding
and decoder U(±0.1), decoder bias 0), batch 20, bptt 35, stateful, SGD lr 20, global-norm clipping at 0.25 of the
token-mean loss, ``--threads`` torch threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``; in the floor setting
``--floor-threads``, default 1, see there).

The settings (``--settings``, a comma list; default all four). Each one's corpus is written once per invocation into
a temporary folder, and every program of the setting reads those same three files. The cut is the first lines of
WikiText-2's ``train.txt`` whose tokens (after the setting's mapping) suffice for ``--warmup + --updates`` updates
and a few more; ``valid.txt`` and ``test.txt`` are the first ~1,400 tokens of the written ``train.txt``, so
evaluation is short and main.py's vocabulary (built over the three files) is seqstab's (built over ``train.txt``,
plus ``<unk>`` and ``<eos>``): the script computes both from the files and prints them in each setting's header.
``--corpus tinyshakespeare`` cuts every setting from tiny Shakespeare instead (``../shared/data/tinyshakespeare/
input.txt``, 202,651 words of 25,670 types, 1.1 M characters: a corpus none of this was tuned on); the settings keep
their names (``wt2-10k`` is then Shakespeare's 9,998 most frequent words, ``char`` its characters), a text without
``<unk>`` gets one line holding it (seqstab's vocabulary always has it), and the word settings need ``--updates 200``
(the text holds ~290 updates of words).

    wt2-33k   WikiText-2 words at the full vocabulary: the cut, then lines holding once each type of the whole
              ``train.txt`` that the cut lacks (20 a line, at the end of the file): 33,278 types, as WikiText-2.
    wt2-10k   the same file with every word outside its 9,998 most frequent (counted on that file; ``<unk>`` itself
              not counted) replaced by ``<unk>``: exactly 10,000 types with ``<unk>`` and ``<eos>``.
    floor     the host floor: the cut's words hashed to 98 words (``w%d`` % (CRC-32 of the word mod 98); ``<unk>``
              kept): 100 types; the LSTM 2 layers × 16 units, embedding 16 (main.py ``--emsize 16 --nhid 16``, seqstab
              ``--model.init_args.embedding_size 16 --model.init_args.net.init_args.hidden_size 16``). Compute is
              nearly nil, so what is timed is per-update host work; 1,000 timed updates unless ``--updates`` says
              otherwise (a few ms each: enough for the 10 ms CPU tick). It runs on ``--floor-threads`` (default 1):
              its kernels are too small for a second thread to help, and with two OpenMP threads on a busy 2-core
              machine the spinning workers turned 3-ms updates into 100-900-ms ones (CPU ≈ wall), which measures the
              neighbours, not the programs. A third program runs here, ``lightning-floor``
              (``benchmarks/lightning_floor.py``, same file, same net and sizes): a bare manual-optimization
              LightningModule, forward + backward + ``optimizer.step()`` and nothing else, no logger, bar or
              checkpoint: Lightning's own floor, which separates what is Lightning's from seqstab's
              (``--lightning-floor`` runs it in the other settings too).
    char      characters: each line's words written as characters separated by spaces, ``_`` for a space
              (``<unk>`` kept as one symbol); main.py and seqstab both read the file as words, so the vocabulary is
              the characters of the cut plus ``_``, ``<unk>``, ``<eos>`` (113 symbols at the default cut). The
              2×200 model.

How an update is timed, the same way for every program: the program prints a line every ``--every`` updates (main.py
its own ``--log-interval`` line; seqstab and lightning-floor a one-line callback of this file, ``UpdateMarks``,
added to seqstab with ``--trainer.callbacks+=``); on each line this process reads the wall clock and the child's CPU
time, user and system apart (all its threads: ``/proc/<pid>/stat`` fields utime and stime, clock ticks of 10 ms).
The timed part runs from the mark after ``--warmup`` updates to the mark ``--updates`` later: start-up,
vocabulary, validation and the checkpoint lie outside it. The whole process's wall time and CPU time (user and
system deltas of ``resource.getrusage(RUSAGE_CHILDREN)``) are printed beside it. Rounds run every selected setting in
turn, and within a setting the programs in rotating order (A B, then B A; with three programs A B C, B C A, C A B),
so a neighbour's burst on a shared machine falls on both; each ratio is taken within a round, and the headline is
the median over rounds. A program that fails (or a seqstab run its explosion guard stops) ends its setting, not the
run: the other settings are timed and reported, and the script then ends non-zero, naming what was not timed.

Per setting a table: each round's ms/update and CPU ms/update (user + sys) of each program, the ratios (speed:
main.py ms ÷ seqstab ms, ≥ 1 when seqstab is faster; CPU: seqstab CPU ÷ main.py CPU, ≤ 1 when cheaper; sys ÷ sys)
and the medians; then the whole processes, with each program's fastest lap of ``--every`` updates over all rounds
(the stretch a neighbour disturbed least: on a shared machine, a floor on what the program itself costs); with
Lightning's floor, seqstab over it in the medians, the fastest laps and round by round. At the end one summary table
against the goals (:func:`judge`): speed ratio ≥ 1.0 and CPU ratio ≤ 1.0 in every setting but the floor, sys ratio
≤ 1.2 where main.py's system time spans enough clock ticks to divide, and in the floor setting seqstab's ms/update
≤ 1.15 × main.py's, or, where Lightning's floor alone is above that, within 0.2 ms of it (medians and fastest laps).

On a GPU (``--device cuda``): main.py gets ``--accel``, seqstab ``--trainer.accelerator gpu --trainer.devices 1``, and
seqstab's marks wait for the device (``UpdateMarks(sync=True)``: seqstab reads nothing back between its flushes, so
the host would otherwise stamp work queued, not done; main.py waits at every update, at its ``loss.item()``). Not with
the floor setting (lightning-floor runs on the CPU only). ``--fused-loss`` sets the seqstab program's
``model.fused_loss`` (``auto`` is off on a GPU); ``--hidden`` replaces the setting's width (``--hidden 1500``: the
2×1500 model, ``--emsize 1500 --nhid 1500`` for main.py). Each program's ms/update also as tokens/s (700 tokens an
update); the goals, set for the CPU, are printed for reference.

``--cell`` trains another recurrent layer in every program: ``gru``, ``rnn_tanh`` or ``rnn_relu`` (main.py's ``--model
GRU``, ``RNN_TANH``, ``RNN_RELU``; seqstab's ``--model.init_args.net.init_args.cell`` and ``nonlinearity``;
``lightning_floor.py --cell``). Everything else stays as above: a vanilla RNN at SGD lr 20 with clipping at 0.25 is
the setup seqstab exists for, and neither program is tuned for it. ``rnn_relu`` cannot be timed at lr 20: at 200
units its activations overflow within a few updates, main.py trains on NaN, and seqstab's guard holds every update
back and stops the run (exit 3); in the floor setting main.py itself ends (``math.exp`` of its loss overflows). Each
such setting is reported as not timed, with its reason.
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
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEER = REPO.parent / "shared" / "peers" / "pytorch-examples-word_language_model" / "main.py"
FLOOR = BENCH / "lightning_floor.py"
BATCH, BPTT = 20, 35
TOKENS = BATCH * BPTT  # per update
EVAL_TOKENS = 4 * 10 * BPTT  # valid = test: 4 evaluation batches of 10 streams
MARK = "seqstab-bench updates"  # UpdateMarks' line
UNK, EOS, SPACE = "<unk>", "<eos>", "_"

try:  # the callback below is imported by the seqstab child, which needs Lightning; this parent does not
    import pytorch_lightning as pl

    _Callback = pl.Callback
except ImportError:  # pragma: no cover
    _Callback = object


class UpdateMarks(_Callback):
    """Prints ``seqstab-bench updates N`` (flushed) after every ``every``-th update: the marks the parent times.

    ``sync``: wait for the CUDA device first (``--device cuda``). seqstab reads nothing back between its flushes, so
    the host runs ahead of the GPU's queue; without the wait a mark would time what was queued, not what was done
    (main.py waits at every update: its ``loss.item()``). One wait per ``every`` updates costs nothing measurable."""

    def __init__(self, every: int = 50, sync: bool = False):
        self.every, self.sync = every, sync

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        updates = pl_module.updates
        if updates % self.every == 0:
            if self.sync:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
            print(f"{MARK} {updates}", flush=True)


@dataclass(frozen=True)
class Setting:
    what: str  # one line for the header
    hidden: int  # embedding = hidden units of each of the 2 layers
    updates: int  # default timed updates a run


SETTINGS = {
    "wt2-33k": Setting("words, the full train vocabulary", 200, 300),
    "wt2-10k": Setting("words, the 10,000 most frequent (the rest <unk>)", 200, 300),
    # a floor update takes a few ms: 1,000 updates keep the 10 ms CPU clock tick below 1 % of the timed part
    "floor": Setting("words hashed to 100, 2 layers of 16 units: per-update host work", 16, 1000),
    "char": Setting("space-separated characters", 200, 300),
}
FLOOR_BUCKETS, TOP_K = 98, 10_000
CELLS = {  # --cell: main.py's --model, seqstab's net arguments, lightning_floor.py's --cell (the same nn module)
    "lstm": ("LSTM", []),
    "gru": ("GRU", ["--model.init_args.net.init_args.cell", "gru"]),
    "rnn_tanh": ("RNN_TANH", ["--model.init_args.net.init_args.cell", "rnn"]),
    "rnn_relu": ("RNN_RELU", ["--model.init_args.net.init_args.cell", "rnn",
                              "--model.init_args.net.init_args.nonlinearity", "relu"]),
}  # fmt: skip


def _wikitext2(args) -> Path:
    import _common

    return _common.wikitext2_dir(str(args.data_dir) if args.data_dir else None) / "train.txt"


def _tinyshakespeare(args) -> Path:
    import _common

    if args.data_dir:
        raise SystemExit("--data-dir names WikiText-2's folder; --corpus tinyshakespeare reads the shared copy")
    path = _common.SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise SystemExit(f"--corpus tinyshakespeare: {path} not found")
    return path


CORPORA = {"wikitext-2": _wikitext2, "tinyshakespeare": _tinyshakespeare}  # --corpus: the text each setting is cut from


# -- the corpora ---------------------------------------------------------------------------------------------------


def _take(lines, tokens: int, name: str) -> list[str]:
    """The first ``lines`` holding at least ``tokens`` tokens (whitespace words, ``<eos>`` at each line's end)."""
    taken, count = [], 0
    for line in lines:
        taken.append(line)
        count += len(line.split()) + 1
        if count >= tokens:
            return taken
    raise SystemExit(f"{name}: {count:,} tokens, fewer than the {tokens:,} the timed part needs")


def _hashed(line: str) -> str:
    words = (w if w == UNK else f"w{zlib.crc32(w.encode('utf8')) % FLOOR_BUCKETS}" for w in line.split())
    return " ".join(words) + "\n"


def _chars(line: str) -> str:
    symbols: list[str] = []
    for i, word in enumerate(line.split()):
        if i:
            symbols.append(SPACE)
        symbols.extend([UNK] if word == UNK else word)
    return " ".join(symbols) + "\n"


def write_corpus(setting: str, train: Path, out: Path, tokens: int) -> None:
    """``setting``'s ``train.txt`` (at least ``tokens`` tokens, cut from the source text ``train``) and its first
    ``EVAL_TOKENS`` as ``valid.txt`` and ``test.txt``, into ``out``."""
    out.mkdir(parents=True)
    with open(train, encoding="utf8") as f:
        if setting in ("wt2-33k", "wt2-10k"):
            lines = _take(f, tokens, str(train))
        elif setting == "floor":
            lines = _take(map(_hashed, f), tokens, str(train))
        elif setting == "char":
            lines = _take(map(_chars, f), tokens, str(train))
            if any(SPACE in w for line in lines for w in line.split() if len(w) > 1):
                raise SystemExit(f"{train}: holds {SPACE!r}, the character setting's space")
        else:
            raise ValueError(setting)
    if setting in ("wt2-33k", "wt2-10k"):
        have = {w for line in lines for w in line.split()}
        missing: dict[str, None] = {}  # the whole train.txt's types the cut lacks, in order of first appearance
        with open(train, encoding="utf8") as f:
            for line in f:
                missing.update((w, None) for w in line.split() if w not in have)
        words = list(missing)
        lines = [*lines, *(" ".join(words[i : i + 20]) + "\n" for i in range(0, len(words), 20))]
    if setting == "wt2-10k":
        counts = Counter(w for line in lines for w in line.split() if w != UNK)
        keep = {w for w, _n in counts.most_common(TOP_K - 2)}  # ties: first seen first
        lines = [" ".join(w if w in keep else UNK for w in line.split()) + "\n" for line in lines]
    if not any(UNK in line.split() for line in lines):  # seqstab's vocabulary always holds <unk>: so must main.py's
        lines.append(f"{UNK}\n")
    (out / "train.txt").write_text("".join(lines), encoding="utf8")
    head = _take(lines, EVAL_TOKENS, "the cut")
    for split in ("valid", "test"):
        (out / f"{split}.txt").write_text("".join(head), encoding="utf8")


def vocabularies(data: Path) -> dict[str, int]:
    """Tokens of the written ``train.txt``, the vocabulary pytorch/examples' ``data.Corpus`` builds over the three
    files (``<eos>`` and every type) and the one seqstab builds over ``train.txt`` (``<unk>``, ``<eos>``, every
    type: ``min_freq`` 1, no ``max_size``)."""
    types: dict[str, set[str]] = {}
    tokens = 0
    for split in ("train", "valid", "test"):
        seen: set[str] = set()
        with open(data / f"{split}.txt", encoding="utf8") as f:
            for line in f:
                words = line.split()
                seen.update(words)
                tokens += (len(words) + 1) * (split == "train")
        types[split] = seen
    main_py = len(types["train"] | types["valid"] | types["test"] | {EOS})
    seqstab = len(types["train"] | {UNK, EOS})
    return {"train_tokens": tokens, "main.py": main_py, "seqstab": seqstab}


# -- running and timing ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a running process, all its threads (``/proc/<pid>/stat`` fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


GUARD_STOPPED = (  # seqstab.train's exit 3 (seqstab.cli.console.EXIT_NOTHING_APPLIED)
    " (seqstab's explosion guard let no update through, or stopped the run after too many held back in a row: this "
    "net and learning rate diverge, and the setting cannot be timed; its lines below say why)"
)


def run_timed(cmd: list[str], env: dict, cwd: Path, mark: re.Pattern, log: Path) -> dict:
    """Run ``cmd``; at each stdout line matching ``mark`` (group 1: updates done) stamp wall clock and the child's
    user and system CPU time. Returns the stamps and the whole process's wall, user and system seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    stamps: dict[int, tuple[float, float, float]] = {}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        lines = []
        for line in proc.stdout:
            found = mark.search(line)
            if found:
                with contextlib.suppress(OSError):
                    stamps[int(found.group(1))] = (time.perf_counter(), *cpu_seconds(proc.pid))
            lines.append(line)
        proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "".join(lines[-5:]) + log.read_text()[-3000:]
        why = GUARD_STOPPED if proc.returncode == 3 and "seqstab.train" in cmd else ""
        raise SystemExit(f"{cmd[:4]}... exited {proc.returncode}{why}:\n{tail}")
    return {
        "stamps": stamps,
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
    }


def per_update(stamps: dict, first: int, last: int) -> tuple[float, float, float]:
    """Wall, user CPU and system CPU milliseconds per update between the marks after ``first`` and ``last``
    updates."""
    if first not in stamps or last not in stamps:
        raise SystemExit(f"marks after {first} and {last} updates not seen (got {sorted(stamps)})")
    (w0, u0, s0), (w1, u1, s1) = stamps[first], stamps[last]
    n = last - first
    return 1e3 * (w1 - w0) / n, 1e3 * (u1 - u0) / n, 1e3 * (s1 - s0) / n


def hidden_size(args, setting: str) -> int:
    """Embedding = hidden units of each LSTM layer: ``--hidden``, else the setting's."""
    return getattr(args, "hidden", None) or SETTINGS[setting].hidden


def commands(args, setting: str, data: Path, work: Path) -> dict[str, tuple[list[str], Path, re.Pattern]]:
    """Each program's command line, working directory and mark pattern (group 1: the mark's number N)."""
    hidden = hidden_size(args, setting)
    cuda = getattr(args, "device", "cpu") == "cuda"
    peer = [
        sys.executable, str(args.peer), "--data", str(data), "--epochs", "1", "--log-interval", str(args.every),
        "--save", str(work / "model.pt"), "--emsize", str(hidden), "--nhid", str(hidden),
    ]  # fmt: skip
    cell = getattr(args, "cell", "lstm")
    peer_model, net_args = CELLS[cell]
    if cell != "lstm":
        peer += ["--model", peer_model]
    if cuda:
        peer.append("--accel")  # main.py: torch.accelerator.current_accelerator()
    seqstab = [
        sys.executable, "-m", "seqstab.train", "fit", "-c", str(REPO / "configs" / "lm" / "wikitext2_lstm.yaml"),
        "--data.data_dir", str(data), "--data.cache_dir", str(work / "cache"), "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(work / "runs"),
        "--trainer.callbacks+=bench_peer.UpdateMarks", "--trainer.callbacks.every", str(args.every),
    ]  # fmt: skip
    if cuda:
        seqstab += ["--trainer.callbacks.sync", "true", "--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    if hidden != 200:
        seqstab += ["--model.init_args.embedding_size", str(hidden), "--model.init_args.net.init_args.hidden_size",
                    str(hidden)]  # fmt: skip
    seqstab += net_args
    seqstab += args.seqstab_args
    unfused = [*seqstab, "--model.init_args.fused_loss", "false"]
    fused = getattr(args, "fused_loss", "auto")  # auto: on the CPU where a chunk's logits take >= 32 MiB
    if fused != "auto":
        seqstab += ["--model.init_args.fused_loss", fused]
    ours = re.compile(rf"{MARK} (\d+)")
    # main.py prints its line N after batch index N (N % interval == 0, N > 0), N + 1 updates done; seqstab's after
    # N updates: the span between two marks is the same number of updates in both
    programs = {
        "main.py": (peer, args.peer.parent, re.compile(r"\|\s+(\d+)/\s*\d+ batches")),
        "seqstab": (seqstab, REPO, ours),
    }
    if args.unfused:
        programs["seqstab unfused"] = (unfused, REPO, ours)
    if setting == "floor" or getattr(args, "lightning_floor", False):
        floor = [sys.executable, str(FLOOR), "--data", str(data), "--emsize", str(hidden), "--nhid", str(hidden),
                 "--every", str(args.every), "--cell", cell]  # fmt: skip
        programs["lightning-floor"] = (floor, work, ours)
    if setting == "floor" and getattr(args, "floor_bare", False):
        bare = [*seqstab, "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                "--trainer.enable_checkpointing", "false", "--model.init_args.clipping", "seqstab.clipping.NoClip",
                "--model.init_args.monitor", "null", "--model.init_args.guard", "null"]  # fmt: skip
        programs["seqstab bare"] = (bare, REPO, ours)
    return programs


PROFILE = """
import runpy, sys, time, torch
from torch.profiler import ProfilerActivity, profile
target, out, rows, window, shapes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
sys.argv = [target, *sys.argv[6:]]
prof = profile(activities=[ProfilerActivity.CPU], record_shapes=shapes)
if window:  # updates A..B: from the start of the A-th Tensor.backward to the B-th's (every program: one an update)
    first, last = map(int, window.split(":"))
    backward, calls, clock = torch.Tensor.backward, [0], [0.0, 0.0]

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == first:
            prof.start()
            clock[0] = time.perf_counter()
        elif calls[0] == last:
            clock[1] = time.perf_counter()
            prof.stop()
        return backward(*args, **kwargs)

    torch.Tensor.backward = counted
else:
    prof.start()
try:
    if target.endswith(".py"):
        sys.path.insert(0, target.rsplit("/", 1)[0])
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as ended:
    if ended.code not in (None, 0):  # the program failed: its own exit, not a table
        raise
if not window:
    prof.stop()
elif calls[0] < last:  # the run ended inside the window, or before it
    if calls[0] >= first:
        prof.stop()
    sys.exit(f"--profile-updates {window}: the program ran {calls[0]} updates")
widths = {"max_name_column_width": 40, "max_shapes_column_width": 80} if shapes else {}
table = prof.key_averages(group_by_input_shape=shapes).table(sort_by="self_cpu_time_total", row_limit=rows, **widths)
if window:  # every row's self CPU (operators, and torch's named ranges) against the wall clock: the rest is host
    # time outside them (and the profiler's)
    wall = (clock[1] - clock[0]) * 1e3 / (last - first)
    ops = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / (last - first)
    table += f"per update under the profiler: wall {wall:.3f} ms, operators' self CPU {ops:.3f} ms, "
    table += f"the rest {wall - ops:.3f} ms\\n"
open(out, "w").write(table)
"""


def profile_programs(args, setting: str, programs: dict, work: Path, env: dict) -> None:
    """Each program once under ``torch.profiler`` (CPU): the top operators by self CPU time, of the whole run or of
    the updates ``--profile-updates`` names."""
    window = args.profile_updates or ""
    for name, (cmd, cwd, _mark) in programs.items():
        out = work / f"profile-{setting}-{name.replace(' ', '_')}.txt"
        target = cmd[1] if cmd[1] != "-m" else cmd[2]
        rest = cmd[2:] if cmd[1] != "-m" else cmd[3:]
        shapes = "1" if args.profile_shapes else "0"
        wrapper = [sys.executable, "-c", PROFILE, target, str(out), str(args.top), window, shapes, *rest]
        done = subprocess.run(wrapper, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"--profile: {name} in {setting} exited {done.returncode}: {last}")
        what = f"updates {window.replace(':', '..')}" if window else "whole run (start-up and validation included)"
        print(f"\n{setting}, {name}: top operators by self CPU time, {what}")
        print(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each one run of every program (A B, B A, ...)")
    parser.add_argument("--updates", type=int, help="timed updates per run (default: 300; floor 1,000)")
    parser.add_argument("--warmup", type=int, default=50, help="updates before the timed part (a multiple of every)")
    parser.add_argument("--every", type=int, default=50, help="a mark every this many updates")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (floor: --floor-threads)")
    parser.add_argument("--floor-threads", type=int, default=1, help="torch threads in the floor setting")
    parser.add_argument("--data-dir", type=Path, help="WikiText-2's folder (default: ../shared/data/wikitext-2)")
    parser.add_argument("--corpus", default="wikitext-2", choices=list(CORPORA),
                        help="the text every setting is cut from: WikiText-2's train.txt, or tiny Shakespeare "
                        "(../shared/data/tinyshakespeare/input.txt: a corpus nothing was tuned on)")  # fmt: skip
    parser.add_argument("--peer", type=Path, default=PEER, help="pytorch/examples word_language_model/main.py")
    parser.add_argument("--unfused", action="store_true", help="one more program: seqstab with fused_loss false")
    parser.add_argument("--floor-bare", action="store_true",
                        help="floor: one more program, seqstab with no bar, logger, checkpoint or clipping (its "
                        "watch-only guard and default monitor stay: null means the task's defaults)")  # fmt: skip
    parser.add_argument(
        "--lightning-floor",
        action="store_true",
        help="run Lightning's floor (lightning-floor) in every setting, not only in the floor one",
    )
    parser.add_argument("--fused-loss", default="auto", choices=["auto", "true", "false"],
                        help="the seqstab program's model.fused_loss (auto: on the CPU where a chunk's logits take "
                        ">= 32 MiB, off on a GPU)")  # fmt: skip
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: main.py --accel, seqstab --trainer.accelerator gpu (its marks wait for the GPU)",
    )
    parser.add_argument("--hidden", type=int, help="embedding = hidden units of each layer (default: the setting's)")
    parser.add_argument("--cell", default="lstm", choices=list(CELLS),
                        help="the recurrent layers of all programs: main.py --model LSTM, GRU, RNN_TANH or RNN_RELU; "
                        "seqstab's net cell (and nonlinearity); lightning_floor.py --cell")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="each program once under torch.profiler instead")
    parser.add_argument("--profile-updates", metavar="A:B",
                        help="with --profile: only updates A..B of each run (from the A-th call of Tensor.backward "
                        "to the B-th), not the whole run")  # fmt: skip
    parser.add_argument("--profile-shapes", action="store_true",
                        help="with --profile: a row per operator and input shapes (which tensors each call "
                        "took)")  # fmt: skip
    parser.add_argument("--top", type=int, default=20, help="operators shown by --profile")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("seqstab_args", nargs="*", help="more arguments for seqstab.train (after --)")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        parser.error(f"--settings: {', '.join(unknown) or 'none'}; choose from {', '.join(SETTINGS)}")
    updates = {s: args.updates or SETTINGS[s].updates for s in settings}
    if args.warmup % args.every or any(n % args.every for n in updates.values()):
        parser.error("--warmup and --updates must be multiples of --every")
    if args.profile_updates is not None:
        window = re.fullmatch(r"(\d+):(\d+)", args.profile_updates)
        if not args.profile or not window or not 0 < int(window[1]) < int(window[2]):
            parser.error(f"--profile-updates {args.profile_updates}: give A:B with 0 < A < B, with --profile")
        if int(window[2]) > args.warmup + min(updates.values()):
            parser.error(f"--profile-updates {args.profile_updates}: past the runs' last update (--warmup + --updates: "
                         f"{args.warmup + min(updates.values())})")  # fmt: skip
    if args.profile_shapes and not args.profile:
        parser.error("--profile-shapes: only with --profile")
    if args.device == "cuda" and ("floor" in settings or args.lightning_floor):
        parser.error("--device cuda: lightning-floor runs on the CPU only (the floor setting, --lightning-floor)")
    sys.path.insert(0, str(BENCH))
    import _common
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    source = CORPORA[args.corpus](args)
    base = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    base["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(REPO), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    threads = {s: args.floor_threads if s == "floor" else args.threads for s in settings}
    print(f"machine: {_common.machine()}")
    print(
        f"peer: {args.peer} (unmodified); {args.threads} threads each (OMP/MKL_NUM_THREADS), in the floor setting "
        f"{args.floor_threads}"
    )
    print(f"source: {source}; {args.rounds} rounds, each setting in turn, programs in rotating order")
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()} (main.py --accel, seqstab --trainer.accelerator gpu)")
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        work = Path(tmp)
        runs: dict[str, dict] = {}
        for setting in settings:
            data, swork = work / setting / "data", work / setting
            write_corpus(setting, source, data, (args.warmup + updates[setting] + 5) * BATCH * BPTT + BATCH)
            programs = commands(args, setting, data, swork)
            env = {**base, "OMP_NUM_THREADS": str(threads[setting]), "MKL_NUM_THREADS": str(threads[setting])}
            runs[setting] = {
                "vocab": vocabularies(data),
                "programs": programs,
                "env": env,
                "threads": threads[setting],
                "results": {n: [] for n in programs},
            }
            vocab = runs[setting]["vocab"]
            print(
                f"\n{setting}: {args.corpus} {SETTINGS[setting].what}; {vocab['train_tokens']:,} train tokens; "
                f"vocabulary main.py {vocab['main.py']:,}, seqstab {vocab['seqstab']:,}; timed: updates {args.warmup}.."
                f"{args.warmup + updates[setting]} of each run; 2×{hidden_size(args, setting)} {CELLS[args.cell][0]}; "
                f"{threads[setting]} threads" + ("" if vocab["main.py"] == vocab["seqstab"] else "  ** THEY DIFFER **")
            )
            for name, (cmd, *_rest) in programs.items():
                print(f"  {name}: {' '.join(cmd)}")
            if args.profile:
                profile_programs(args, setting, programs, swork, env)
        if args.profile:
            return
        failed: dict[str, str] = {}  # setting -> why it could not be timed (the others go on)
        for r in range(args.rounds):
            for setting in settings:
                if setting in failed:
                    continue
                programs, results = runs[setting]["programs"], runs[setting]["results"]
                names = list(programs)
                order = names[r % len(names) :] + names[: r % len(names)]
                first, last = args.warmup, args.warmup + updates[setting]
                for name in order:
                    cmd, cwd, mark = programs[name]
                    log = work / setting / f"{name.replace(' ', '_')}-{r}.log"
                    try:
                        out = run_timed(cmd, runs[setting]["env"], cwd, mark, log)
                        stamps = out.pop("stamps")
                        ms, user, sys_ms = per_update(stamps, first, last)
                    except SystemExit as why:
                        failed[setting] = f"round {r + 1}, {name}: {why}"
                        print(f"round {r + 1} {setting} {name}: FAILED, the setting is not timed: {why}", flush=True)
                        break
                    laps = [per_update(stamps, n, n + args.every)[0] for n in range(first, last, args.every)]
                    results[name].append(
                        {**out, "ms": ms, "user_ms": user, "sys_ms": sys_ms, "order": order.index(name), "laps": laps}
                    )
                    print(
                        f"round {r + 1} {setting} {name}: {ms:.2f} ms/update wall ({TOKENS / ms * 1e3:,.0f} "
                        f"tokens/s), CPU {user + sys_ms:.2f} ms "
                        f"(user {user:.2f} + sys {sys_ms:.2f}); whole process {out['wall']:.1f} s wall, CPU "
                        f"{out['user']:.1f} + {out['sys']:.1f} s; laps of {args.every}: "
                        + ", ".join(f"{x:.1f}" for x in laps),
                        flush=True,
                    )
    timed = {setting: run for setting, run in runs.items() if setting not in failed}
    if timed:
        report(timed, args, updates, failed)
    if failed:
        raise SystemExit(
            "\nnot timed: " + "; ".join(f"{setting} ({why.splitlines()[0]})" for setting, why in failed.items())
        )


# -- the report ------------------------------------------------------------------------------------------------------


FLOOR_MARGIN_MS = 0.2  # the floor setting: seqstab within this of Lightning's floor, where that floor misses 1.15×
MIN_SYS_TICKS = 10  # main.py's system time over the timed updates, in clock ticks, for a sys ratio to be judged


def judge(
    setting: str,
    speed: float,
    cpu: float,
    sys: float,
    sys_ticks: float,
    ms: dict[str, float],
    fastest: dict[str, float],
) -> tuple[list[str], list[str]]:
    """The goals of a setting that its figures miss, and notes on what was not judged (issue 30's acceptance).

    * speed ≥ 1.0 and CPU ≤ 1.0 (main.py's over seqstab's, seqstab's over main.py's): each vocabulary, not the floor
      setting, which has its own goal;
    * sys ≤ 1.2, where main.py's system time over the timed updates (``sys_ticks``, median of rounds) spans at least
      :data:`MIN_SYS_TICKS` ticks of the CPU clock: fewer are too coarse to divide (at the floor a whole run's is a tick
      or two);
    * the floor: seqstab's ms/update ≤ 1.15× main.py's; where Lightning's floor alone is above that, seqstab within
      :data:`FLOOR_MARGIN_MS` of Lightning's floor, in the medians (``ms``) and in the fastest laps (``fastest``).
    """
    missed, notes = [], []
    if setting != "floor":
        if speed < 1.0:
            missed.append(f"speed {speed:.3f} < 1.0")
        if cpu > 1.0:
            missed.append(f"CPU {cpu:.3f} > 1.0")
    if sys_ticks < MIN_SYS_TICKS:
        notes.append(f"sys {sys:.3f}: main.py's spans {sys_ticks:.0f} clock ticks, not judged")
    elif sys > 1.2:
        missed.append(f"sys {sys:.3f} > 1.2")
    if setting == "floor":
        goal = 1.15 * ms["main.py"]
        if "lightning-floor" in ms and ms["lightning-floor"] > goal:
            for figure, values in (("medians", ms), ("fastest laps", fastest)):
                over = values["seqstab"] - values["lightning-floor"]
                if over > FLOOR_MARGIN_MS:
                    missed.append(f"{figure} {over:+.3f} ms over Lightning's floor > +{FLOOR_MARGIN_MS}")
        elif ms["seqstab"] > goal:
            missed.append(f"ms {ms['seqstab'] / ms['main.py']:.3f}× > 1.15× main.py's")
    return missed, notes


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else float("nan")


def flops_per_update(hidden: int, vocab: int, layers: int = 2) -> float:
    """Training FLOPs of one update, bench_throughput's count: 3 × forward; each LSTM layer 2·4H·(I+H) a token
    (I = H: the embedding is as wide), the decoder 2·H·V."""
    return 3 * (layers * 2 * 4 * hidden * 2 * hidden + 2 * hidden * vocab) * BATCH * BPTT


def report(runs: dict[str, dict], args, updates: dict[str, int], not_timed: dict[str, str] | None = None) -> None:
    """Each setting's tables, the summary against the goals, and with ``--json`` the figures (``not_timed``: the
    settings a failing program ended, and why)."""
    import _common
    import torch

    med = _common.median
    cuda = args.device == "cuda"
    if cuda:
        peak = _common.cuda_matmul_gflops()
        name = torch.cuda.get_device_name()
        print(f"\nmatmul peak (float32 8192² torch.mm on {name}, best of 10): {peak:,.0f} GFLOP/s")
    else:
        peak = _common.matmul_gflops()
        print(f"\nmatmul peak (float32 2048² torch.mm, best of 10, {torch.get_num_threads()} threads): {peak:,.0f} "
              "GFLOP/s")  # fmt: skip
    summary, figures = [], {}
    for setting, run in runs.items():
        results, vocab = run["results"], run["vocab"]
        names = list(results)
        ours = [n for n in names if n != "main.py"]
        peer = results["main.py"]
        ratios = {
            name: {
                "speed": [_ratio(p["ms"], s["ms"]) for p, s in zip(peer, results[name], strict=True)],
                "cpu": [
                    _ratio(s["user_ms"] + s["sys_ms"], p["user_ms"] + p["sys_ms"])
                    for p, s in zip(peer, results[name], strict=True)
                ],
                "sys": [_ratio(s["sys_ms"], p["sys_ms"]) for p, s in zip(peer, results[name], strict=True)],
            }
            for name in ours
        }
        same = "equal" if vocab["main.py"] == vocab["seqstab"] else "**they differ**"
        print(
            f"\n### {setting}: {args.corpus} {SETTINGS[setting].what}\n\nvocabulary: main.py {vocab['main.py']:,} "
            f"(train + valid + test), seqstab {vocab['seqstab']:,} (train): {same}; {vocab['train_tokens']:,} train "
            f"tokens; 2×{hidden_size(args, setting)} {CELLS[args.cell][0]}; "
            f"{'the GPU' if cuda else str(run['threads']) + ' threads'}; "
            f"{args.rounds} rounds × {updates[setting]} "
            "timed updates "
            f"({updates[setting] * BATCH * BPTT:,} tokens) after {args.warmup}\n"
        )
        head = ["round"]
        for name in names:
            head += [f"{name} ms", f"{name} CPU ms (user + sys)"]
        for name in ours:
            head += [f"{name} speed", f"{name} CPU", f"{name} sys"]
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))

        for r in range(args.rounds):
            order = sorted(names, key=lambda n, r=r: results[n][r]["order"])
            values = {n: (results[n][r]["ms"], results[n][r]["user_ms"], results[n][r]["sys_ms"]) for n in names}
            per_round = {n: {k: v[r] for k, v in ratios[n].items()} for n in ours}
            print(_row(f"{r + 1} ({', '.join(order)})", values, per_round))
        values = {n: tuple(med([x[k] for x in results[n]]) for k in ("ms", "user_ms", "sys_ms")) for n in names}
        print(_row("**median**", values, {n: {k: med(v) for k, v in ratios[n].items()} for n in ours}))
        flops = flops_per_update(hidden_size(args, setting), vocab["seqstab"])
        print(
            "\n| program | ms/update (median) | tokens/s | whole process wall s | CPU user s | CPU sys s "
            f"| effective GFLOP/s | % of matmul peak | fastest lap of {args.every} |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        ms = {name: med([x["ms"] for x in results[name]]) for name in names}
        cpu = {name: med([x["user_ms"] + x["sys_ms"] for x in results[name]]) for name in names}
        fastest = {name: min(lap for x in results[name] for lap in x["laps"]) for name in names}  # least disturbed
        for name in names:
            gflops = flops / ms[name] / 1e6
            print(
                f"| {name} | {ms[name]:.2f} | {TOKENS / ms[name] * 1e3:,.0f} "
                f"| {_spread([x['wall'] for x in results[name]])} "
                f"| {_spread([x['user'] for x in results[name]])} | {_spread([x['sys'] for x in results[name]])} "
                f"| {gflops:.2f} | {100 * gflops / peak:.1f}% | {fastest[name]:.2f} |"
            )
        if "lightning-floor" in results:
            print(
                f"\nseqstab over Lightning's floor: {ms['seqstab'] - ms['lightning-floor']:+.2f} ms/update wall, "
                f"{cpu['seqstab'] - cpu['lightning-floor']:+.2f} ms CPU (medians); Lightning's floor over main.py: "
                f"{ms['lightning-floor'] - ms['main.py']:+.2f} ms wall, {cpu['lightning-floor'] - cpu['main.py']:+.2f}"
                " ms CPU; in the fastest laps (the least disturbed stretch of each program, a floor on what it costs):"
                f" seqstab {fastest['seqstab'] - fastest['lightning-floor']:+.2f} ms over Lightning's floor"
            )
            rounds = over_floor_by_round(results)  # the goal takes the medians' difference; these show its spread
            print(
                f"seqstab over Lightning's floor round by round: {', '.join(f'{d:+.2f}' for d in rounds)} ms "
                f"(their median {med(rounds):+.2f})"
            )
        speed, cpu_ratio, sys_ratio = (med(ratios["seqstab"][k]) for k in ("speed", "cpu", "sys"))
        sys_ticks = med([x["sys_ms"] for x in results["main.py"]]) * updates[setting] * os.sysconf("SC_CLK_TCK") / 1e3
        missed, notes = judge(setting, speed, cpu_ratio, sys_ratio, sys_ticks, ms, fastest)
        floor_ms = f"{ms['lightning-floor']:.2f}" if "lightning-floor" in ms else "–"
        summary.append(
            f"| {setting} | {vocab['main.py']:,} / {vocab['seqstab']:,} | {speed:.3f} | {cpu_ratio:.3f} "
            f"| {sys_ratio:.3f} | {ms['seqstab']:.2f} | {ms['main.py']:.2f} | {floor_ms} "
            f"| {'met' if not missed else 'not met: ' + '; '.join(missed)}{''.join(f' ({n})' for n in notes)} |"
        )
        medians = {n: {"ms": ms[n], "tokens_per_s": TOKENS / ms[n] * 1e3, "cpu_ms": cpu[n],
                       "effective_gflops": flops / ms[n] / 1e6} for n in names}  # fmt: skip
        commands_run = {n: " ".join(p[0]) for n, p in run["programs"].items()}
        figures[setting] = {"vocab": vocab, "threads": run["threads"], "updates": updates[setting],
                            "hidden": hidden_size(args, setting), "flops_per_update": flops, "medians": medians,
                            "commands": commands_run, "ratios": ratios, "runs": results}  # fmt: skip
    goals = "goals set for the CPU, shown for reference: " if cuda else "goals: "
    print(
        f"\n### Summary (medians over rounds; {goals}speed ≥ 1.0, CPU ≤ 1.0, sys ≤ 1.2; the floor: ms ≤ 1.15× main.py, "
        f"or ≤ Lightning's floor + {FLOOR_MARGIN_MS} ms where that floor alone is above it)\n\n"
        "| setting | vocabulary main.py / seqstab | speed: main.py ms ÷ seqstab ms | CPU: seqstab ÷ main.py "
        "| sys: seqstab ÷ main.py | seqstab ms/update | main.py ms/update | Lightning floor ms/update | goals |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    print("\n".join(summary))
    print(
        "\nsettings that differ: seqstab logs every update to TensorBoard (loss, pre/post-clip norm, clip flag, "
        "threshold, lr; per-module norms and gradient flow every 50th, the monitor's default) and shows its progress "
        f"bar (stdout, as Lightning's); main.py prints a line every {args.every} batches (its default: 200). main.py "
        "keeps the batch "
        "sequence-first (L, B), seqstab batch-first (B, L); main.py's loss is log_softmax + NLLLoss, seqstab's "
        "cross-entropy (fused with the decoder where model.fused_loss is on: auto = a chunk's logits of 32 MiB "
        "or more, so wt2-33k only); main.py's SGD step is p.data.add_ per parameter, seqstab's torch.optim.SGD; "
        "main.py draws its dropout masks with torch's bernoulli_, seqstab on the CPU with seqstab.nets.dropout (one "
        "int64 draw per two elements: benchmarks/bench_dropout.py). Seeds differ (1111, 0). Outside the timed "
        "part: main.py validates at the epoch's end and saves model.pt; seqstab also runs 2 sanity validation "
        "batches and saves a checkpoint. lightning-floor: see benchmarks/lightning_floor.py."
    )
    if cuda:
        print(
            "\non the GPU: main.py waits for the device at every update (its loss.item()); seqstab reads back once "
            "every log_every_n_steps (50) updates, and its marks wait for the device (UpdateMarks(sync=True)), so "
            "both are timed on work done. model.fused_loss auto is off on a GPU: the seqstab program's setting is in "
            "its command line above."
        )
    if args.json:
        out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "rounds": args.rounds,
               "warmup": args.warmup, "every": args.every, "threads": args.threads, "matmul_peak_gflops": peak,
               "fused_loss": args.fused_loss, "cell": args.cell, "settings": figures,
               "not_timed": not_timed or {}}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1))


def over_floor_by_round(results: dict[str, list[dict]]) -> list[float]:
    """seqstab's ms/update over Lightning's floor's in each round (both programs' runs of that round)."""
    pairs = zip(results["seqstab"], results["lightning-floor"], strict=True)
    return [ours["ms"] - floor["ms"] for ours, floor in pairs]


def _row(label: str, values: dict[str, tuple[float, float, float]], ratios: dict[str, dict[str, float]]) -> str:
    """One row of a setting's table: each program's ms and CPU ms (user + sys), then each ratio against main.py."""
    cells = [label]
    for ms, user, sys_ms in values.values():
        cells += [f"{ms:.2f}", f"{user + sys_ms:.2f} ({user:.2f} + {sys_ms:.2f})"]
    for ratio in ratios.values():
        cells += [f"{ratio[key]:.3f}" if ratio[key] == ratio[key] else "–" for key in ("speed", "cpu", "sys")]
    return "| " + " | ".join(cells) + " |"


def _spread(values: list[float], digits: int = 1) -> str:
    import _common

    return f"{_common.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


if __name__ == "__main__":
    main()
