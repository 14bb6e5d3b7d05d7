"""``python -m seqstab.sweep --config configs/sweeps/<name>.yaml``: many ordinary runs, one report.

A sweep file names a base config, overrides shared by every run, a grid over config keys and/or a list of named
variants (each a set of overrides). Every combination is an ordinary ``python -m seqstab.train fit`` run in its
own directory under one sweep directory; finished runs are skipped when the sweep is started again. At the end
(and with ``--report-only``) the sweep reads every run's TensorBoard events, ``explosions.jsonl`` and
``manifest.json`` and writes ``report.md``, ``report.csv`` and PNG plots.

Sweep file (keys are the dotted keys of ``python -m seqstab.train``, without the leading ``--``)::

    # python -m seqstab.sweep --config configs/sweeps/explode.yaml
    name: explode                          # sweep directory <out>/<name>; default: the file's stem
    base: ../explode/adding_rnn.yaml       # config file(s) every run starts from, relative to this file
    args:                                  # overrides shared by every run
      trainer.max_epochs: 5
    grid:                                  # cartesian product
      data.seq_len: [50, 100, 200, 400]
    variants:                              # named override sets, each crossed with the grid
      noclip: {}
      normclip: {model.clipping: {class_path: seqstab.clipping.NormClip, init_args: {max_norm: 1.0}}}
      tbptt20: {model.tbptt_steps: 20, data.seq_len: [200, 400]}  # a grid key set in a variant: only these
    plot:
      x: data.seq_len                      # the x axis of the "against T" plots; default: the first grid key
    search:                                # optional: the stability map (seqstab/search.py)
      key: optimizer.lr                    # for each combination, the largest value meeting the criterion,
      range: [1.0e-4, 10.0]                # by bisection: that combination's runs in sequence, combinations
      budget: 5                            # in parallel; the report opens with the map

Backends: ``--backend local`` (default) runs ``--jobs`` subprocesses from a thread pool; ``--backend ray`` runs each
as a Ray task (``--address``, ``--cpus-per-run``, ``--gpus-per-run``) that starts the same subprocess. One driver
(``Plan`` + ``run_sweep``) decides what runs for both, so skipping, rerunning, Ctrl-C and the report are the same.

Run directory of a combination: ``<out>/<name>/<variant>-<key>=<value>...`` (``overrides.yaml``: the run's
overrides as the config file read after the base; ``train.log``, TensorBoard events, ``config.yaml``,
``manifest.json``, ``explosions.jsonl``, checkpoints, and ``done.json`` once it finished).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqstab.cli.sweep.search import Bisection, SearchSpec, meets
from seqstab.core.errors import ConfigError, SeqstabError
from seqstab.core.io import write_text

DONE_FILE = "done.json"
EXIT_INTERRUPTED = 130  # stopped by SIGINT/SIGTERM (128 + SIGINT), as a shell reports Ctrl-C
OVERRIDES_FILE = "overrides.yaml"
FAILED_FILE = "failed.json"  # a run that exited non-zero; run again when the sweep is started again
SWEEP_KEYS = {"name", "base", "args", "grid", "variants", "plot", "search"}
TRAIN_TAIL = 20  # final train loss: mean over the last this many updates
SPIKE_REASONS = ("spike", "non-finite")  # spike_count: events of these reasons (a max_norm event is not counted)


@dataclass
class Run:
    """One combination of a sweep: its id, the swept values and the full override list."""

    id: str
    variant: str | None
    values: dict[str, Any]  # swept key -> value (grid keys and the variant's own keys)
    overrides: dict[str, Any] = field(default_factory=dict)
    cell: str | None = None  # a search's run: the id of the combination whose bisection it is part of


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str
    base: list[Path]
    args: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]] | None
    x: str | None
    search: SearchSpec | None = None  # the stability map: bisect one key in every combination (seqstab/search.py)

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep config {path}: no such file")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"sweep config {path}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep config {path}: must be a mapping with keys {sorted(SWEEP_KEYS)}")
        unknown = set(spec) - SWEEP_KEYS
        if unknown:
            raise ConfigError(f"sweep config {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
        bases = spec.get("base") or []
        bases = [bases] if isinstance(bases, str) else list(bases)
        resolved = []
        for base in bases:
            candidate = (path.parent / base).resolve()
            if not candidate.is_file():
                raise ConfigError(f"sweep config {path}: base {base!r} not found (looked at {candidate})")
            resolved.append(candidate)
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
            raise ConfigError(f"sweep config {path}: grid must map each key to a non-empty list of values")
        variants = spec.get("variants")
        if variants is not None:
            if isinstance(variants, list):  # a list of names with their overrides: [{name: {...}}, ...]
                variants = {k: v for item in variants for k, v in item.items()}
            if not isinstance(variants, dict) or not variants:
                raise ConfigError(f"sweep config {path}: variants must map names to override mappings")
            for vname, overrides in variants.items():
                if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(vname)):
                    raise ConfigError(f"sweep config {path}: variant name {vname!r} must match [A-Za-z0-9_.+-]+")
                if overrides is not None and not isinstance(overrides, dict):
                    raise ConfigError(f"sweep config {path}: variant {vname!r} must map keys to values")
            variants = {str(k): dict(v or {}) for k, v in variants.items()}
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"sweep config {path}: args must map keys to values")
        search = SearchSpec.parse(spec["search"], f"sweep config {path}") if spec.get("search") is not None else None
        if search is not None:
            keys = [*grid, *args, *(k for v in (variants or {}).values() for k in v)]
            if search.key in keys:
                raise ConfigError(f"sweep config {path}: search.key {search.key!r} is set in args, grid or variants")
        plot = spec.get("plot") or {}
        x = plot.get("x") if isinstance(plot, dict) else None
        if x is None and grid:
            x = next(iter(grid))
        if x is None and search is not None:
            x = search.key
        return cls(str(spec.get("name") or path.stem), resolved, args, grid, variants, x, search)

    def runs(self) -> list[Run]:
        """Every combination, in order. A variant setting a grid key runs at that value only (a list: those values)."""
        runs: dict[str, Run] = {}
        keys = list(self.grid)
        variants = self.variants.items() if self.variants else [(None, {})]
        for variant, overrides in variants:
            axes = {k: _pinned(overrides[k]) if k in overrides else v for k, v in self.grid.items()}
            own = {k: v for k, v in overrides.items() if k not in self.grid}
            for combo in itertools.product(*axes.values()):
                values = dict(zip(keys, combo, strict=True))
                run_id = _run_id(variant, values)
                if run_id not in runs:
                    runs[run_id] = Run(run_id, variant, values, {**self.args, **values, **own})
        return list(runs.values())


def _pinned(value: Any) -> list[Any]:
    """A variant's value for a grid key: a list keeps those grid values, anything else pins the key to it."""
    return list(value) if isinstance(value, list) else [value]


def _run_id(variant: str | None, values: dict[str, Any]) -> str:
    parts = [variant] if variant else []
    short = _short_names(list(values))
    parts += [f"{short[k]}={_format_value(v)}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts)) or "run"


def _short_names(keys: list[str]) -> dict[str, str]:
    """Last component of each dotted key, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _format_value(value: Any) -> str:
    if isinstance(value, dict) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def command(sweep: Sweep, run: Run, run_dir: Path) -> list[str]:
    """The ``python -m seqstab.train fit`` command line of one run, logging into ``run_dir``.

    The run's overrides are written to ``run_dir/overrides.yaml``, a config file read after the base: a YAML value
    (``null`` included) reaches a key at any depth that way, which a dotted command-line flag does not for the
    arguments of a net or a station (``--model.net.spectral_radius null`` is refused by jsonargparse)."""
    cmd = [sys.executable, "-m", "seqstab.train", "fit"]
    for base in sweep.base:
        cmd += ["--config", str(base)]
    if run.overrides:
        path = run_dir / OVERRIDES_FILE
        write_text(path, yaml.safe_dump(nested(run.overrides), sort_keys=False))
        cmd += ["--config", str(path)]
    cmd += [
        "--trainer.logger.init_args.save_dir",
        str(run_dir.parent),
        "--trainer.logger.init_args.name",
        "",
        "--trainer.logger.init_args.version",
        run_dir.name,
        "--trainer.enable_progress_bar",
        "false",
    ]
    return cmd


_CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as the nested mapping of a config file: ``{"model.net.cell": "lstm"}`` -> ``{"model": {"net":
    {"cell": "lstm"}}}`` (jsonargparse reads a class's arguments there with or without ``init_args``). Under a class
    set by ``class_path`` and ``init_args`` (``optimizer: {class_path: ..., init_args: {lr: 0.1}}`` and
    ``optimizer.lr: 1``), a dotted key goes into its ``init_args``."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for depth, part in enumerate([*parents, leaf]):
            if "class_path" in node and isinstance(node.get("init_args"), dict) and part not in _CLASS_KEYS:
                node = node["init_args"]
            if depth == len(parents):
                break
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"sweep override {key!r}: {part!r} is set to a value and also has keys under it")
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return tree


# -- running ------------------------------------------------------------------------------------------------


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE_FILE).is_file()


class Stop:
    """The sweep's stop switch: SIGINT/SIGTERM end the running children and start nothing new; a second signal
    kills the children and the sweep at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested.is_set():  # the second Ctrl-C: no waiting for anything
            self.signal_children(signal.SIGKILL)
            os._exit(EXIT_INTERRUPTED)
        self.requested.set()
        self.signal_children(signal.SIGTERM)

    def signal_children(self, signum: int) -> None:
        with self.lock:
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signum)  # the child and whatever it started (its own session)

    def start(self, cmd: list[str], log, env: dict[str, str], cwd: str | None = None) -> subprocess.Popen | None:
        with self.lock:
            if self.requested.is_set():
                return None
            child = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
            self.children.add(child)
            return child

    def wait(self, child: subprocess.Popen) -> int:
        try:
            while True:  # in short waits: ray.cancel's KeyboardInterrupt is raised between two, not after the run
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return child.wait(timeout=0.5)
        except KeyboardInterrupt:  # a cancelled Ray task (ray.cancel raises it in the task): end the run first
            self.requested.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            child.wait()
            raise
        finally:
            with self.lock:
                self.children.discard(child)


def execute(
    sweep: Sweep, run: Run, run_dir: Path, threads: int | None, stop: Stop | None = None, cwd: str | None = None
) -> dict | None:
    """Run one combination to completion; on success mark it done (atomically). Returns its outcome, or None when
    the sweep was stopped before or while it ran (nothing is marked: it runs again next time)."""
    stop = stop or Stop()
    if stop.requested.is_set():
        return None
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start clean
    run_dir.mkdir(parents=True)
    cmd = command(sweep, run, run_dir)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        child = stop.start(cmd, log, env, cwd)
        if child is None:
            return None
        code = stop.wait(child)
    if stop.requested.is_set():
        return None
    outcome = {"run": run.id, "exit_code": code, "wall_s": round(time.perf_counter() - start, 3), "command": cmd}
    marker = DONE_FILE if code == 0 else FAILED_FILE
    write_text(run_dir / marker, json.dumps(outcome, indent=2) + "\n")
    return outcome


# -- backends: where the runs run -----------------------------------------------------------------------------


class LocalBackend:
    """Runs as subprocesses of this process, ``jobs`` at a time (a thread pool waiting on them).

    Args:
        jobs: Runs at a time.
        threads: torch threads per run (``OMP_NUM_THREADS``); default: cores / jobs when jobs > 1.
        stop: The sweep's stop switch.
    """

    def __init__(self, jobs: int = 1, threads: int | None = None, stop: Stop | None = None) -> None:
        if threads is None and jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // jobs)
        self.threads, self.stop = threads, stop or Stop()
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs))

    def submit(self, sweep: Sweep, run: Run, run_dir: Path) -> Future:
        return self.pool.submit(execute, sweep, run, run_dir, self.threads, self.stop)

    def wait(self, handles: list[Future]) -> list[tuple[Future, dict | None]]:
        """Block until at least one run ends; its handle(s) and outcome(s) (None: stopped)."""
        done, _ = futures_wait(handles, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)  # queued runs never start once stopped


def _ray_task(sweep: Sweep, run: Run, run_dir: str, threads: int | None, cwd: str) -> dict | None:
    """One run on a Ray worker: the same ``execute`` as the local backend, in the driver's directory when this node
    has it. ``ray.cancel`` ends the run's process group (``Stop.wait``) and marks nothing."""
    # ray.cancel interrupts the task with SIGINT: make sure it raises KeyboardInterrupt here, even in a worker whose
    # Ray was started from a process ignoring SIGINT (a shell's background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return execute(sweep, run, Path(run_dir), threads, Stop(), cwd if os.path.isdir(cwd) else None)


class RayBackend:
    """Runs as Ray tasks, each an ordinary ``seqstab.train fit`` subprocess on whichever node Ray picks.

    Ray *tasks*, not Ray Tune: the sweep keeps its own skip/rerun logic, run directories and report, identical to the
    local backend's (Tune would own the trial directories, the scheduling and the resuming); Ray only places runs
    on nodes by the resources each asks for.

    Args:
        address: A running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts Ray on this machine
            (or reuses the Ray this process already started).
        cpus_per_run: CPUs Ray reserves for each run; also its torch threads (``OMP_NUM_THREADS``).
        gpus_per_run: GPUs Ray reserves for each run (Ray sets ``CUDA_VISIBLE_DEVICES`` for it).
        stop: The sweep's stop switch: once it fires, this sweep's tasks are cancelled.
    """

    def __init__(
        self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0, stop: Stop | None = None
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray: Ray is not installed (pip install 'seqstab[ray]')") from None
        self.ray, self.stop, self.started = ray, stop or Stop(), False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except ConnectionError as err:
                raise ConfigError(f"--address {address}: no Ray cluster there ({' '.join(str(err).split())})") from None
            self.started = True
        self.threads = max(1, int(cpus_per_run)) if cpus_per_run else None
        self.task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)

    def submit(self, sweep: Sweep, run: Run, run_dir: Path) -> Any:
        return self.task.remote(sweep, run, str(run_dir.resolve()), self.threads, os.getcwd())

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict | None]]:
        """Block until at least one run ends (polling, so that Ctrl-C is seen); once stopped: cancel every handle and
        return them all, with None for those cancelled."""
        while not self.stop.requested.is_set():
            ready, _ = self.ray.wait(handles, num_returns=1, timeout=0.5)
            if ready:
                return [(ref, self.ray.get(ref)) for ref in ready]
        for ref in handles:
            self.ray.cancel(ref)  # queued: dropped; running: KeyboardInterrupt in the task, which ends its run
        ended = []
        for ref in handles:
            try:
                ended.append((ref, self.ray.get(ref)))  # finished before the cancel reached it: keep its outcome
            except (self.ray.exceptions.TaskCancelledError, self.ray.exceptions.RayTaskError):
                ended.append((ref, None))
        return ended

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


# -- the driver: one loop for both backends -------------------------------------------------------------------


class Plan:
    """Which runs to start, and which run follows a finished one.

    A grid sweep: every unfinished combination, at once. A search sweep: for each combination (a *cell*), the next
    value its bisection tests; when that run ends, the one after it (runs of a cell in sequence, cells in parallel).
    The bisection is replayed from the finished runs' directories, so a search resumes where it stopped."""

    def __init__(self, sweep: Sweep, sweep_dir: Path) -> None:
        self.sweep, self.sweep_dir = sweep, sweep_dir
        self.verdicts: dict[str, bool] = {}  # run id -> met the criterion (finished runs, read once)

    def total(self) -> int:
        cells = self.sweep.runs()
        return len(cells) * self.sweep.search.budget if self.sweep.search else len(cells)

    def finished(self) -> int:
        """Runs already finished (a search: those its bisections replay)."""
        if self.sweep.search is None:
            return sum(is_done(self.sweep_dir / r.id) for r in self.sweep.runs())
        return sum(is_done(self.sweep_dir / r.id) for cell in self.sweep.runs() for r in self.replay(cell)[1])

    def start(self) -> list[Run]:
        if self.sweep.search is None:
            return [r for r in self.sweep.runs() if not is_done(self.sweep_dir / r.id)]
        return [nxt for cell in self.sweep.runs() if (nxt := self.replay(cell)[2]) is not None]

    def after(self, run: Run, outcome: dict) -> list[Run]:
        if self.sweep.search is None or outcome["exit_code"] != 0:
            return []  # a failed run ends its cell's search until the sweep is started again
        cell = self.cells()[run.cell]
        nxt = self.replay(cell)[2]
        return [nxt] if nxt is not None else []

    def cells(self) -> dict[str, Run]:
        return {c.id: c for c in self.sweep.runs()}

    def replay(self, cell: Run) -> tuple[Bisection, list[Run], Run | None]:
        """The cell's bisection from its finished runs: the state, the runs so far and the next one (None: done)."""
        search = self.sweep.search
        bisection = search.bisection()
        runs: list[Run] = []
        while (value := bisection.next_value()) is not None:
            run = search_run(cell, search.key, value)
            runs.append(run)
            run_dir = self.sweep_dir / run.id
            if not is_done(run_dir):
                return bisection, runs, run
            if run.id not in self.verdicts:
                data = read_run(run_dir)
                self.verdicts[run.id] = meets(search.criterion, data["scalars"], summarize(run, data))
            bisection.record(value, self.verdicts[run.id])
        return bisection, runs, None


def search_run(cell: Run, key: str, value: float) -> Run:
    """The run of a search cell at one value of the searched key."""
    values = {**cell.values, key: value}
    run_id = _run_id(cell.variant, values)
    return Run(run_id, cell.variant, values, {**cell.overrides, key: value}, cell=cell.id)


def run_sweep(
    sweep: Sweep,
    out: Path,
    jobs: int = 1,
    threads: int | None = None,
    stop: Stop | None = None,
    backend: LocalBackend | RayBackend | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished run under ``out/<name>`` on ``backend`` (default: local, ``jobs`` at a time), with a
    progress bar. With a ``stop`` switch that fires: the running runs end, no new one starts, and what finished is
    returned."""
    from tqdm import tqdm

    stop = stop or Stop()
    backend = backend or LocalBackend(jobs, threads, stop)
    sweep_dir = out / sweep.name
    plan = Plan(sweep, sweep_dir)
    todo = plan.start()
    total = plan.total()
    outcomes = []
    bar = tqdm(total=total, initial=plan.finished(), desc=f"sweep {sweep.name}", unit="run")
    pending: dict[Any, Run] = {}
    try:
        for run in todo:
            pending[backend.submit(sweep, run, sweep_dir / run.id)] = run
        while pending:
            for handle, outcome in backend.wait(list(pending)):
                run = pending.pop(handle)
                if outcome is None:
                    continue
                outcomes.append(outcome)
                bar.set_postfix_str(f"{outcome['run']} ({'ok' if outcome['exit_code'] == 0 else 'FAILED'})")
                bar.update()
                if stop.requested.is_set():
                    continue
                for nxt in plan.after(run, outcome):
                    pending[backend.submit(sweep, nxt, sweep_dir / nxt.id)] = nxt
    finally:
        backend.close()
        bar.close()
    return outcomes


# -- reading runs back --------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> dict[str, Any]:
    """Scalars, explosion events, manifest and outcome of one run directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    if run_dir.is_dir():
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    events_file = run_dir / "explosions.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.is_file() else []
    return {
        "scalars": scalars,
        "events": events,
        "manifest": _read_json(run_dir / "manifest.json"),
        "done": _read_json(run_dir / DONE_FILE),
        "failed": _read_json(run_dir / FAILED_FILE),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run: Run, data: dict[str, Any]) -> dict[str, Any]:
    """One report row: swept values, explosion steps, norms, clipping, final metrics, chance baseline, wall time."""
    scalars, events, done = data["scalars"], data["events"], data["done"]
    norms = [v for _, v in scalars.get("grad/norm_total", [])]
    finite = [v for v in norms if math.isfinite(v)]
    nonfinite_steps = [s for s, v in scalars.get("grad/norm_total", []) if not math.isfinite(v)]
    clipped = [v for _, v in scalars.get("grad/clipped", [])]
    train = [v for _, v in scalars.get("train/loss", [])][-TRAIN_TAIL:]
    growth = [v for _, v in scalars.get("grad_flow/growth", []) if math.isfinite(v)]
    row: dict[str, Any] = {"run": run.id, "variant": run.variant or ""}
    row.update({k: _format_value(v) for k, v in run.values.items()})
    row.update(
        {
            "status": _status(data),
            "updates": len(norms),
            "first_explosion_step": events[0]["update"] if events else None,
            "first_nonfinite_step": nonfinite_steps[0] if nonfinite_steps else None,
            "spike_count": sum(e.get("reason") in SPIKE_REASONS for e in events) if norms else None,
            "initial_norm": next((v for v in norms if v > 0), None),  # the first gradient: untrained weights
            "max_pre_clip_norm": max(finite) if finite else None,
            "frac_clipped": sum(clipped) / len(clipped) if clipped else None,
            "final_train_loss": statistics.fmean(train) if train else None,
        }
    )
    for tag in sorted(t for t in scalars if t.startswith("val/")):
        row[f"final_{tag}"] = scalars[tag][-1][1]
    manifest = data["manifest"] or {}
    row["chance_loss"] = (manifest.get("task") or {}).get("chance_loss")
    row["grad_flow_growth"] = statistics.median(growth) if growth else None
    row["wall_s"] = done["wall_s"] if done else None
    return row


def _status(data: dict[str, Any]) -> str:
    if data["done"]:
        return "done"
    return f"failed (exit {data['failed']['exit_code']})" if data["failed"] else "missing"


def write_report(sweep: Sweep, out: Path) -> list[dict[str, Any]]:
    """Write ``report.csv``, ``report.md`` and the plots into the sweep directory; return the rows. A search sweep's
    report opens with the stability map (``stability_map.csv``, ``stability_map.png``)."""
    sweep_dir = out / sweep.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(sweep, sweep_dir)
    if sweep.search is None:
        runs, cells = sweep.runs(), []
    else:
        cells = [(cell, *plan.replay(cell)) for cell in sweep.runs()]
        runs = [r for _, _, cell_runs, _ in cells for r in cell_runs]
    data = {r.id: read_run(sweep_dir / r.id) for r in runs}
    rows = [summarize(r, data[r.id]) for r in runs]
    for r, row in zip(runs, rows, strict=True):
        if r.id in plan.verdicts:
            row["criterion"] = "met" if plan.verdicts[r.id] else "not met"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    _write_csv(sweep_dir / "report.csv", rows, columns)
    head = None
    if sweep.search is not None:
        map_rows = [_map_row(sweep, cell, bisection, nxt, sweep_dir) for cell, bisection, _, nxt in cells]
        _write_csv(sweep_dir / "stability_map.csv", map_rows, list(map_rows[0]) if map_rows else [])
        head = _map_markdown(sweep, map_rows, _stability_plot(sweep, cells, sweep_dir))
    plots = write_plots(sweep, runs, data, rows, sweep_dir)
    (sweep_dir / "report.md").write_text(_markdown(sweep, rows, columns, plots, head))
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: _csv_cell(row.get(c)) for c in columns} for row in rows)


def _map_row(sweep: Sweep, cell: Run, bisection: Bisection, nxt: Run | None, sweep_dir: Path) -> dict[str, Any]:
    """One row of the stability map: a combination, the largest value that met the criterion, the bracket."""
    low, high = bisection.bracket
    if nxt is None:
        state = "done"
    elif (sweep_dir / nxt.id / FAILED_FILE).is_file():
        state = f"failed run {nxt.id}"
    else:
        state = "unfinished"
    row: dict[str, Any] = {"cell": cell.id, "variant": cell.variant or ""}
    row.update({k: _format_value(v) for k, v in cell.values.items()})
    row.update(
        {
            "largest": bisection.largest,
            "bracket_low": low,
            "bracket_high": high,
            "low_tested": bisection.largest is not None,
            "high_tested": any(not ok for _, ok in bisection.tested),
            "runs": len(bisection.tested),
            "state": state,
        }
    )
    return row


def _map_markdown(sweep: Sweep, map_rows: list[dict[str, Any]], plot: str) -> list[str]:
    search = sweep.search
    name = search.key.rsplit(".", 1)[-1]
    criterion = " and ".join(f"`{c}`" for c in search.criterion)
    grid = [k for k in map_rows[0] if k not in ("cell", "variant")][: -len(MAP_COLUMNS)] if map_rows else []
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"## Stability map: the largest `{search.key}` that meets {criterion}",
        "",
        f"Bisection over [{search.low:g}, {search.high:g}] ({search.scale} scale), {search.budget} runs per variant, "
        "run in sequence (the variants in parallel). The ends of the range are assumed (the low end meets the "
        "criterion, the high end does not) and never run: an end marked * is such an assumption. `stable`: no "
        "non-finite gradient norm or loss, and the final training loss below the first update's.",
        "",
        "| "
        + " | ".join(
            ["variant", *(k.rsplit(".", 1)[-1] for k in grid), f"largest stable {name}", "bracket", "runs", "state"]
        )
        + " |",  # fmt: skip
        "|" + " --- |" * (len(grid) + 5),
    ]
    for row in map_rows:
        largest = _md_value(row["largest"]) if row["largest"] is not None else f"< {_md_value(row['bracket_high'])}"
        low = _md_value(row["bracket_low"]) + ("" if row["low_tested"] else "*")
        high = _md_value(row["bracket_high"]) + ("" if row["high_tested"] else "*")
        cells = [row["variant"] or row["cell"], *(str(row[k]) for k in grid), largest, f"[{low}, {high})"]
        lines.append("| " + " | ".join([*cells, f"{row['runs']}/{search.budget}", row["state"]]) + " |")
    return [*lines, "", f"![{plot}]({plot})", "", "## Every run", ""]


MAP_COLUMNS = ("largest", "bracket_low", "bracket_high", "low_tested", "high_tested", "runs", "state")


def _md_value(value: float) -> str:
    return f"{value:.3g}"


def _stability_plot(sweep: Sweep, cells: list[tuple[Run, Bisection, list[Run], Run | None]], sweep_dir: Path) -> str:
    """``stability_map.png``: per combination, its bracket as a bar, the values it ran (o: met, x: not met)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    search = sweep.search
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(cells) + 1.4))
    for i, (_, bisection, _, _) in enumerate(cells):
        low, high = bisection.bracket
        ax.plot([low, high], [i, i], color="tab:blue", lw=6, alpha=0.35, solid_capstyle="butt")
        passed = [v for v, ok in bisection.tested if ok]
        failed = [v for v, ok in bisection.tested if not ok]
        ax.plot(passed, [i] * len(passed), "o", color="tab:green", ms=5, label="met" if i == 0 else None)
        ax.plot(failed, [i] * len(failed), "x", color="tab:red", ms=6, label="not met" if i == 0 else None)
        if bisection.largest is not None:
            ax.plot([bisection.largest], [i], "|", color="black", ms=14, mew=2)
    ax.set_yticks(range(len(cells)), [cell.id for cell, *_ in cells], fontsize=8)
    ax.invert_yaxis()
    if search.scale == "log":
        ax.set_xscale("log")
    ax.set_xlim(search.low, search.high)
    ax.set_xlabel(f"{search.key} (bar: the bracket; |: the largest that met the criterion)")
    ax.set_title(f"{sweep.name}: stability map", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(sweep_dir / "stability_map.png", dpi=90)
    plt.close(fig)
    return "stability_map.png"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value


def _md_cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(
    sweep: Sweep, rows: list[dict[str, Any]], columns: list[str], plots: list[str], head: list[str] | None = None
) -> str:
    shown = [c for c in columns if c != "run"]
    total = sum(r["wall_s"] or 0 for r in rows)
    lines = [
        *(head or [f"# Sweep `{sweep.name}`", ""]),
        f"{len(rows)} runs from {', '.join(f'`{p.name}`' for p in sweep.base) or 'the default config'}; "
        f"{sum(r['status'] == 'done' for r in rows)} finished, {total:.0f} s of run wall time in all.",
        "",
        "Steps are update indices (the x axis of every per-update TensorBoard scalar). `first_explosion_step`: "
        "the first explosion-guard event; `spike_count`: guard events for a spike (pre-clip norm above "
        "`spike_factor` × the running median) or a non-finite norm; `initial_norm`: the first non-zero pre-clip "
        "norm (the weights as initialised); "
        "`max_pre_clip_norm`: the largest finite pre-clip gradient norm; "
        f"`final_train_loss`: mean of the last {TRAIN_TAIL} updates; `final_val/*`: the last validation; "
        "`grad_flow_growth`: median over the run, where the monitor logged it.",
        "",
        "| " + " | ".join(shown) + " |",
        "| " + " | ".join("---" for _ in shown) + " |",
    ]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in shown) + " |" for r in rows]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# -- plots ----------------------------------------------------------------------------------------------------


def write_plots(
    sweep: Sweep, runs: list[Run], data: dict[str, Any], rows: list[dict[str, Any]], sweep_dir: Path
) -> list[str]:
    """``norms.png`` always; ``growth_vs_<x>.png`` and ``metric_vs_<x>.png`` when the sweep has an x key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.variant or "runs", []).append(r)
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False, sharey=True)
    for ax, (group, members) in zip(axes.flat, groups.items(), strict=False):
        for r in members:
            series = data[r.id]["scalars"].get("grad/norm_total", [])
            shown = [(s, v) for s, v in series if math.isfinite(v) and v > 0]  # log scale
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={_format_value(v)}" for k, v in r.values.items()) or r.id
            marker = "o" if len(shown) < 5 else None  # a run that died at once is still a visible point
            (line,) = ax.plot([s for s, _ in shown], [v for _, v in shown], lw=0.9, marker=marker, ms=3, label=label)
            bad = [s for s, v in series if not math.isfinite(v)]
            if bad:
                ax.axvline(bad[0], color=line.get_color(), ls=":", lw=0.9)
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("update")
        ax.set_ylabel("pre-clip grad norm")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(f"{sweep.name}: pre-clip gradient norm (dotted: first non-finite)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (3.4 * nrows)))  # room for the title
    fig.savefig(sweep_dir / "norms.png", dpi=90)
    plt.close(fig)
    written.append("norms.png")
    if sweep.x is None:
        written.append(_metric_bars(sweep, rows, sweep_dir, plt))
        return written
    xname = sweep.x.rsplit(".", 1)[-1]
    by_group: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for r, row in zip(runs, rows, strict=True):
        if sweep.x in r.values and _is_number(r.values[sweep.x]):
            by_group.setdefault(_group_label(r, sweep.x), []).append((r, row))
    metric = "final_val/loss" if any("final_val/loss" in row for row in rows) else "final_train_loss"
    for name, column, ylabel, log in (
        (f"growth_vs_{xname}.png", "grad_flow_growth", "grad_flow/growth (median)", False),
        (f"metric_vs_{xname}.png", metric, metric, True),
    ):
        points = {
            g: sorted((float(r.values[sweep.x]), row[column]) for r, row in members if _is_float(row.get(column)))
            for g, members in by_group.items()
        }
        points = {g: p for g, p in points.items() if p}
        if not any(math.isfinite(y) for p in points.values() for _, y in p):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
        for g, p in points.items():
            ys = [y if math.isfinite(y) else math.nan for _, y in p]
            (line,) = ax.plot([x for x, _ in p], ys, marker="o", label=g)
            bad = [x for x, y in p if not math.isfinite(y)]  # non-finite: an x at the top edge
            ax.plot(bad, [0.97] * len(bad), "x", color=line.get_color(), transform=top, clip_on=False)
        if column == metric:
            chance = [row["chance_loss"] for row in rows if _is_number(row.get("chance_loss"))]
            if chance and "loss" in metric:
                ax.axhline(chance[0], color="grey", ls="--", lw=1, label="chance")
        if log and all(y > 0 for p in points.values() for _, y in p if math.isfinite(y)):
            ax.set_yscale("log")
        ax.set_xlabel(xname)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{sweep.name}: {ylabel} against {xname} (x at the top: non-finite)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(sweep_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def _metric_bars(sweep: Sweep, rows: list[dict[str, Any]], sweep_dir: Path, plt) -> str:
    """``metric_by_run.png``: the final validation loss of every run as a bar (log scale), chance as a line."""
    metric = "final_val/loss" if any("final_val/loss" in row for row in rows) else "final_train_loss"
    names = [row["run"] for row in rows]
    values = [row.get(metric) for row in rows]
    finite = [v for v in values if _is_number(v) and v > 0]
    top = max(finite) * 10 if finite else 1.0
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    for i, v in enumerate(values):
        ok = _is_number(v) and v > 0
        ax.barh(i, v if ok else top, color="tab:blue" if ok else "tab:red", alpha=1.0 if ok else 0.35)
        if not ok:
            ax.text(top, i, " non-finite" if _is_float(v) else " missing", va="center", fontsize=7)
    chance = [row["chance_loss"] for row in rows if _is_number(row.get("chance_loss"))]
    if chance and "loss" in metric:
        ax.axvline(chance[0], color="grey", ls="--", lw=1, label="chance")
        ax.legend(fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(metric)
    ax.set_title(f"{sweep.name}: {metric} per run", fontsize=10)
    fig.tight_layout()
    fig.savefig(sweep_dir / "metric_by_run.png", dpi=90)
    plt.close(fig)
    return "metric_by_run.png"


def _group_label(run: Run, x: str) -> str:
    others = [f"{k.rsplit('.', 1)[-1]}={_format_value(v)}" for k, v in run.values.items() if k != x]
    return ", ".join(([run.variant] if run.variant else []) + others) or "runs"


def _is_float(value: Any) -> bool:
    """A number, finite or not (inf/nan are drawn as markers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- command line ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqstab.sweep",
        description="Run a grid of seqstab trainings (resumable) and write report.md, report.csv and plots.",
    )
    parser.add_argument("--config", "-c", required=True, type=Path, help="sweep YAML (configs/sweeps/<name>.yaml)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweeps"), help="where the sweep directory goes")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: subprocesses of this machine (default); ray: Ray tasks on a cluster (pip install 'seqstab[ray]')",
    )
    parser.add_argument("--jobs", "-j", type=int, default=1, help="local: runs in parallel (processes); default 1")
    parser.add_argument(
        "--threads", type=int, default=None, help="local: torch threads per run (OMP_NUM_THREADS); default cores / jobs"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="ray: the cluster to use (auto, HOST:PORT, ray://HOST:PORT); default: start Ray on this machine",
    )
    parser.add_argument(
        "--cpus-per-run", type=float, default=1, help="ray: CPUs reserved per run, also its torch threads; default 1"
    )
    parser.add_argument("--gpus-per-run", type=float, default=0, help="ray: GPUs reserved per run; default 0")
    parser.add_argument("--list", action="store_true", help="print each run's id and command, run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = parser.parse_args(argv)
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs={args.jobs}: must be >= 1")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads={args.threads}: must be >= 1")
        if args.backend == "local" and args.address is not None:
            raise ConfigError(f"--address {args.address}: only with --backend ray")
        if args.cpus_per_run < 0 or args.gpus_per_run < 0:
            raise ConfigError(f"--cpus-per-run={args.cpus_per_run} --gpus-per-run={args.gpus_per_run}: must be >= 0")
        sweep = Sweep.load(args.config)
        sweep_dir = args.out / sweep.name
        if args.list:
            plan = Plan(sweep, sweep_dir)
            listed = sweep.runs() if sweep.search is None else [r for c in sweep.runs() for r in plan.replay(c)[1]]
            for r in listed:
                state = "done" if is_done(sweep_dir / r.id) else "todo"
                print(f"{r.id} [{state}]: {' '.join(command(sweep, r, sweep_dir / r.id)[1:])}")
            return 0
        start = time.perf_counter()
        stop = Stop()
        backend = None
        if args.backend == "ray" and not args.report_only:  # before our handlers: Ctrl-C is ours, not Ray's
            backend = RayBackend(args.address, args.cpus_per_run, args.gpus_per_run, stop)
        handlers = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            outcomes = [] if args.report_only else run_sweep(sweep, args.out, args.jobs, args.threads, stop, backend)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        rows = write_report(sweep, args.out)
    except SeqstabError as err:
        print(f"seqstab.sweep: error: {err}", file=sys.stderr)
        return 2
    done = sum(r["status"] == "done" for r in rows)
    report = sweep_dir / "report.md"
    if stop.requested.is_set():
        print(
            f"seqstab.sweep: stopped: {done}/{len(rows)} runs done, the rest runs when started again; report: {report}"
        )
        return EXIT_INTERRUPTED
    failed = [o for o in outcomes if o["exit_code"] != 0]
    print(f"sweep {sweep.name}: {len(outcomes)} run(s) now, {done}/{len(rows)} done, "
          f"{time.perf_counter() - start:.1f} s; report: {report}")  # fmt: skip
    for o in failed:
        print(f"  FAILED {o['run']} (exit {o['exit_code']}): see {sweep_dir / o['run'] / 'train.log'}", file=sys.stderr)
    if args.report_only:
        unfinished = [r for r in rows if r["status"] != "done"]
        for r in unfinished:
            print(f"  {r['status'].upper()} {r['run']}", file=sys.stderr)
        return 1 if unfinished else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
