"""``GradientStability`` inside darts, pytorch-forecasting and neuralforecast, and ``UpdateCore`` in a plain PyTorch
loop, each used the way its own docs show, on ETTh1's OT (24 h ahead from 96 h): what works, and what it costs.

    .venv-peers/bin/python benchmarks/bench_callback_peers.py                 # all, ~15 min on 2 cores
    .venv-peers/bin/python benchmarks/bench_callback_peers.py --only cost     # the hooks' host cost only
    .venv-peers/bin/python benchmarks/bench_callback_peers.py --only healthy --seeds 0,1,2,3,4 --norms peers.json
    PYTHONPATH=../main .venv-peers/bin/python benchmarks/bench_callback_peers.py --only cost,healthy  # main's code

The peer libraries are dependencies of this benchmark only, never of seqstab (``.venv-peers``, git-ignored)::

    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0
    .venv-peers/bin/pip install darts pytorch-forecasting neuralforecast && .venv-peers/bin/pip install -e .

The six models (``peers.py``): darts ``RNNModel`` and ``BlockRNNModel`` (``pl_trainer_kwargs={"callbacks": [...]}``),
pytorch-forecasting ``RecurrentNetwork`` and ``DeepAR`` (``from_dataset``, a ``lightning.pytorch.Trainer``),
neuralforecast ``LSTM(..., callbacks=[...])`` (``NeuralForecast.fit``), and a plain loop around ``UpdateCore``.
Each is put through (``--only``, a comma list; default all):

* ``healthy``: ``--steps`` updates under ``GradientStability(guard=ExplosionGuard(policy="skip", snapshot=False))``,
  nothing provoked, once per seed of ``--seeds`` (the models' seeds; default 0): events and skipped updates, added
  up over the seeds (goal 0); the pre-clip norms are written to ``--norms`` (JSON) for
  ``bench_false_alarms.py``, which replays them through the guard's spike rule of any version.
* ``cost``: the callback's own host time per update, every hook of it timed (``perf_counter`` around each:
  ``on_train_batch_start``, ``on_before_backward``, ``on_before_optimizer_step`` — with the update core and every
  flush in it —, the optimizer post-step hook, ``on_train_batch_end``, ``on_validation_start``,
  ``on_save_checkpoint``), over the updates after the first ``--warmup``; beside it the library's median step. Two
  settings: the callback's defaults, and ``NormClip`` + a skip guard with a snapshot armed (the guard then keeps the
  weights of a possible event on the device at every update).
* ``spike``: one batch's floating-point inputs scaled by 10^4 at update ``--spike-at`` (for neuralforecast, whose
  batch is the whole series and whose robust scaler would undo a uniform factor, the target on alternate days), under
  ``GradientStability(clipping=NormClip(max_norm=1.0), guard=ExplosionGuard(policy="skip"))``: the event (update,
  reason, action), its diagnosis (top mechanism, the data factor, the input it measured, the remedies), the snapshot
  loaded with ``weights_only=True`` and replayed, from Python (``seqstab.replay.replay(..., module=factory)``) and by
  the command (``python -m seqstab.replay SNAPSHOT --module peers.<factory>``), bitwise.
* ``resume``: darts saved and loaded by its own safe load (no ``trusted=True``), fit again from its checkpoint: the
  callback's update count carried on; pytorch-forecasting's checkpoint: the globals a ``weights_only=True`` load must
  allow, with and without the callback, then a resume with them allowed; neuralforecast's ``hparams.yaml`` and
  checkpoint: no seqstab object as ``!!python/object`` or as a global.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _common
import peers
import torch
from peers_callbacks import TRAINERS, LPlanter, LRecorder, PLPlanter, PLRecorder, TimedStability

from seqstab.core.clipping import NormClip
from seqstab.core.guard import ExplosionGuard
from seqstab.lightning.callbacks import GradientStability

HERE = Path(__file__).resolve().parent
MODELS = ("darts_rnn", "darts_block", "pf_rnn", "pf_deepar", "nf_lstm", "loop")
PARTS = ("healthy", "cost", "spike", "resume")


def live_stability() -> Any:
    """The stability callback of the last Trainer that fit."""
    return next(cb for cb in TRAINERS[-1].callbacks if isinstance(cb, GradientStability))


# -- fitting each model -------------------------------------------------------------------------------------------


def fit_model(name: str, stability: Any, steps: int, root: Path, spike_at: int | None = None, **extra: Any) -> Path:
    """Train ``name`` for ``steps`` updates with ``stability`` (and a planted spike at ``spike_at``); returns the
    logger's directory (where the callback writes explosions.jsonl and snapshots)."""
    import lightning.pytorch as L
    from pytorch_lightning.loggers import TensorBoardLogger as PLLogger

    root.mkdir(parents=True, exist_ok=True)
    if name.startswith("darts"):
        kind = name.split("_")[1]
        callbacks = [PLRecorder()]
        if spike_at is not None:
            callbacks.append(PLPlanter(spike_at, "darts"))
        extra = {"model_name": name, "log_tensorboard": True, **extra}
        model = peers.darts_model(kind, [*callbacks, stability], steps, work_dir=str(root), **extra)
        model.fit(peers.darts_series())  # darts' own TensorBoard logger (a logger passed in would not pickle safely)
        extra_out = model
        log_dir = Path(TRAINERS[-1].logger.log_dir) if TRAINERS[-1].logger else root
    elif name.startswith("pf"):
        dataset = peers.pf_dataset()
        model = peers.pf_model(name.split("_")[1], dataset)
        callbacks = [LRecorder()]
        if spike_at is not None:
            callbacks.append(LPlanter(spike_at, name))
        logger = L.loggers.TensorBoardLogger(str(root), name="", version="run", default_hp_metric=False)
        trainer = L.Trainer(
            max_steps=steps,
            callbacks=[*callbacks, stability],
            logger=logger,
            default_root_dir=root,
            **peers.QUIET,
            **extra,
        )
        with torch.random.fork_rng():
            torch.manual_seed(peers.SEED)
            trainer.fit(model, dataset.to_dataloader(train=True, batch_size=64, num_workers=0))
        extra_out = trainer
        log_dir = Path(logger.log_dir)
    elif name == "nf_lstm":
        from neuralforecast import NeuralForecast

        callbacks = [PLRecorder()]
        if spike_at is not None:
            callbacks.append(PLPlanter(spike_at, "nf"))
        logger = PLLogger(str(root), name="", version="run", default_hp_metric=False)
        model = peers.nf_lstm(max_steps=steps, val_check_steps=steps, callbacks=[*callbacks, stability], logger=logger)
        nf = NeuralForecast(models=[model], freq="h")
        nf.fit(peers.nf_frame())
        extra_out = nf
        log_dir = Path(logger.log_dir)
    else:
        raise ValueError(name)
    fit_model.last = extra_out
    return log_dir


def run_loop(steps: int, root: Path, guard: ExplosionGuard, clipping=None, spike_at: int | None = None, cost=None):
    """The plain loop: ``UpdateCore`` around an LSTM and Adam (the 30 lines a user writes)."""
    from seqstab import StaticRun, UpdateCore

    torch.manual_seed(peers.SEED)
    net = peers.Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    core = UpdateCore(clipping, guard)
    run = StaticRun(net, optimizer=optimizer, run_dir=root, log_every_n_steps=50, loggers=[NormLog()])
    params = list(net.parameters())
    seconds = []
    for step, (x, y) in zip(range(steps), peers.loop_windows(), strict=False):
        if step == spike_at:
            x, y = x * 1e4, y * 1e4  # the whole batch
        start = time.perf_counter()
        core.arm(run)
        armed = time.perf_counter() - start
        loss = peers.loss_of(net, (x, y))
        optimizer.zero_grad()
        loss.backward()
        start = time.perf_counter()
        core.update(run, params, loss, step=optimizer.step, chunk=(x, y))
        seconds.append(armed + time.perf_counter() - start)  # the core's time, the optimizer step included
        run.global_step += 1
    start = time.perf_counter()
    core.finish(run)
    seconds[-1] += time.perf_counter() - start
    run_loop.norms = run.loggers[0].norms
    return core, seconds


class NormLog:
    """A logger of the loop's run: keeps ``grad/norm_total`` by update (any object with ``log_metrics`` is one)."""

    def __init__(self):
        self.norms: dict[int, float] = {}

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "grad/norm_total" in metrics:
            self.norms[step] = metrics["grad/norm_total"]


# -- the parts ------------------------------------------------------------------------------------------------------


def norms_of(log_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("grad/norm_total"), key=lambda e: e.step)]


def log_dir_of(name: str, root: Path) -> Path:
    return Path(TRAINERS[-1].logger.log_dir) if name.startswith("darts") else root / "run"


def healthy(name: str, steps: int, root: Path) -> dict[str, Any]:
    guard = ExplosionGuard(policy="skip", snapshot=False)
    if name == "loop":
        core, _ = run_loop(steps, root, guard)
        return {"updates": core.updates, "events": guard.events, "skipped": core.updates - core.applied,
                "norms": [run_loop.norms[i] for i in sorted(run_loop.norms)]}  # fmt: skip
    fit_model(name, GradientStability(guard=guard), steps, root)
    live = live_stability()
    core = live.core
    return {
        "updates": core.updates,
        "events": core.guard.events,
        "skipped": core.updates - core.applied,
        "norms": norms_of(log_dir_of(name, root)),
    }


def cost(name: str, steps: int, root: Path, warmup: int, setting: str) -> dict[str, Any]:
    """Host time of the callback's hooks per update (ms), and the library's median step (ms)."""
    if setting == "defaults":
        make = lambda cls: cls()  # noqa: E731
        guard = None
    else:
        make = lambda cls: cls(clipping=NormClip(max_norm=1.0), guard=ExplosionGuard(policy="skip"))  # noqa: E731
        guard = ExplosionGuard(policy="skip")
    if name == "loop":
        _, seconds = run_loop(steps, root, guard or ExplosionGuard(policy="warn", snapshot=False),
                              NormClip(max_norm=1.0) if guard else None)  # fmt: skip
        return {"ms_per_update": 1e3 * sum(seconds[warmup:]) / len(seconds[warmup:]), "step_ms": None, "hooks": {}}
    TimedStability.warmup = warmup
    fit_model(name, make(TimedStability), steps, root)
    live = live_stability()
    per_update = [0.0] * steps
    hooks = {}
    for hook, times in live.seconds.items():
        if hook == "step_ends":
            continue
        hooks[hook] = 1e3 * sum(times[warmup:]) / max(len(times[warmup:]), 1)
        for i, t in enumerate(times[:steps]):
            per_update[i] += t
    ends = live.seconds["step_ends"]
    steps_ms = sorted(1e3 * (b - a) for a, b in zip(ends[warmup:-1], ends[warmup + 1 :], strict=True))
    timed_updates = per_update[warmup:]
    return {
        "ms_per_update": 1e3 * sum(timed_updates) / len(timed_updates),
        "step_ms": steps_ms[len(steps_ms) // 2] if steps_ms else None,
        "hooks": hooks,
        "stations": {k: 1e3 * v / (steps - warmup) for k, v in live.stations.items()},
    }


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


FACTORIES = {
    "darts_rnn": "peers.darts_rnn_module",
    "darts_block": "peers.darts_block_module",
    "pf_rnn": "peers.pf_rnn_module",
    "pf_deepar": "peers.pf_deepar_module",
    "nf_lstm": "peers.nf_module",
    "loop": "peers.Net",
}


def spike(name: str, steps: int, root: Path, at: int) -> dict[str, Any]:
    """The planted spike: recorded, diagnosed, its snapshot replayed (Python and the command), bitwise."""
    from seqstab.replay import load_snapshot, replay

    guard = ExplosionGuard(policy="skip")
    if name == "loop":
        run_loop(steps, root / "run", guard, NormClip(max_norm=1.0), spike_at=at)
        log_dir = root / "run"
    else:
        log_dir = fit_model(name, GradientStability(clipping=NormClip(max_norm=1.0), guard=guard), steps, root, at)
        if name.startswith("darts"):
            saved = root / f"{name}.pt"
            fit_model.last.save(str(saved), clean=True)  # the user's saved model, what replay's factory loads
            # (clean: darts' safe load refuses the TensorBoardLogger darts itself put in its Trainer arguments)
            os.environ[f"PEERS_DARTS_{name.split('_')[1].upper()}"] = str(saved)
    record = log_dir / "explosions.jsonl"  # written at the first event
    lines = [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []
    out: dict[str, Any] = {"events": [(e["update"], e["reason"], e["action"]) for e in lines]}
    out["norms"] = [run_loop.norms[i] for i in sorted(run_loop.norms)] if name == "loop" else norms_of(log_dir)
    if not lines:  # a finding, not a failure: e.g. early in training, where the norms still swing by 10x
        out["missed"] = f"no event: the guard did not flag the spike planted at update {at} of {steps}"
        return out
    first = lines[0]
    diagnosis = first.get("diagnosis", {})
    data = next(f for f in diagnosis["ranked"] if f["mechanism"] == "data")
    out.update(top=diagnosis.get("top"), data_factor=10 ** float(data["score"]), data_evidence=data["evidence"],
               remedies={f["mechanism"]: f["remedies"] for f in diagnosis["ranked"] if f["remedies"]})  # fmt: skip
    snapshot_path = log_dir / first["snapshot"]
    torch.load(snapshot_path, weights_only=True)  # tensors and plain values only
    snapshot = load_snapshot(snapshot_path)
    factory = FACTORIES[name]
    result = replay(snapshot, module=factory, loss="peers.loss_of" if name == "loop" else None)
    out["replay_python"] = f32(result["norm"]) == f32(snapshot["logged"]["grad/norm_total"])
    command = [sys.executable, "-m", "seqstab.replay", str(snapshot_path), "--module", factory]
    if name == "loop":
        command += ["--loss", "peers.loss_of"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, env=env)
    out["replay_command"] = done.returncode == 0 and "replayed norm == logged norm (bitwise)" in done.stdout
    if not out["replay_command"]:
        out["replay_error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
    return out


def resume(name: str, root: Path, steps: int) -> dict[str, Any]:
    """Each library's own way to save and continue, with the callback in it."""
    import lightning.pytorch as L

    if name.startswith("darts"):
        kind = name.split("_")[1]
        from darts.models import BlockRNNModel, RNNModel

        cls = RNNModel if kind == "rnn" else BlockRNNModel
        stability = GradientStability(clipping=NormClip(max_norm=1.0))
        fit_model(name, stability, steps, root, save_checkpoints=True, log_tensorboard=False)
        loaded = cls.load_from_checkpoint(name, work_dir=str(root), best=False)  # darts' safe load: trusted=False
        carried = next(cb for cb in loaded.trainer_params["callbacks"] if isinstance(cb, GradientStability))
        loaded.trainer_params["max_steps"] = 2 * steps
        loaded.fit(peers.darts_series())
        live = live_stability()
        return {
            "safe_load": True,
            "carried_settings": repr(carried.clipping) == repr(stability.live.clipping),
            "updates_after_resume": live.updates,
            "expected": 2 * steps,
        }
    if name.startswith("pf"):
        found = {}
        for with_callback in (False, True):
            callbacks = [L.callbacks.ModelCheckpoint(dirpath=root / f"ckpt_{with_callback}", save_last=True)]
            if with_callback:
                callbacks.append(GradientStability(clipping=NormClip(max_norm=1.0)))
            dataset = peers.pf_dataset()
            trainer = L.Trainer(
                max_steps=steps, callbacks=callbacks, logger=False, default_root_dir=root, **peers.QUIET
            )
            trainer.fit(peers.pf_model(name.split("_")[1], dataset), dataset.to_dataloader(train=True, batch_size=64))
            ckpt = root / f"ckpt_{with_callback}" / "last.ckpt"
            found[with_callback] = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)))
        ours = [g for g in found[True] if g.startswith("seqstab")]
        allowed = [_resolve(g) for g in found[True]]
        out = {"globals_without": found[False], "globals_with": found[True], "seqstab_globals": ours}
        for weights_only in (True, False):  # its globals allowed, weights_only; then as pytorch-forecasting loads
            stability = GradientStability(clipping=NormClip(max_norm=1.0))
            dataset = peers.pf_dataset()
            trainer = L.Trainer(
                max_steps=2 * steps, callbacks=[stability], logger=False, default_root_dir=root, **peers.QUIET
            )
            try:
                with torch.serialization.safe_globals(allowed):
                    trainer.fit(
                        peers.pf_model(name.split("_")[1], dataset),
                        dataset.to_dataloader(train=True, batch_size=64),
                        ckpt_path=str(root / "ckpt_True" / "last.ckpt"),
                        weights_only=weights_only,
                    )
                out[f"updates_weights_only_{weights_only}"] = stability.updates
            except Exception as err:
                out[f"updates_weights_only_{weights_only}"] = f"{type(err).__name__}: {_why(err)}"
        return {**out, "expected": 2 * steps}
    if name == "nf_lstm":
        stability = GradientStability(clipping=NormClip(max_norm=1.0))
        ckpt_dir = root / "ckpt"
        from neuralforecast import NeuralForecast
        from pytorch_lightning.callbacks import ModelCheckpoint
        from pytorch_lightning.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(root), name="", version="run", default_hp_metric=False)
        checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
        model = peers.nf_lstm(max_steps=steps, val_check_steps=steps, callbacks=[stability, checkpoints],
                              logger=logger, enable_checkpointing=True)  # fmt: skip
        NeuralForecast(models=[model], freq="h").fit(peers.nf_frame())
        hparams = (root / "run" / "hparams.yaml").read_text()
        python_objects = [line.strip() for line in hparams.splitlines() if "!!python/object" in line]
        ckpt = ckpt_dir / "last.ckpt"
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)))
        return {
            "yaml_python_objects": python_objects,
            "yaml_seqstab_objects": [line for line in python_objects if "seqstab" in line],
            "ckpt_globals": unsafe,
            "seqstab_globals": [g for g in unsafe if g.startswith("seqstab")],
            "user_object_updates": stability.updates,
            "live_is_copy": stability.live is not stability,
        }
    return {}


def _why(err: BaseException) -> str:
    """The line of a weights_only refusal that names what it refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (named or lines or [""])[0][:300]


def _resolve(qualname: str) -> Any:
    import importlib

    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- the report -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=200, help="updates of a healthy run")
    parser.add_argument("--cost-steps", type=int, default=120, help="updates of a timed run")
    parser.add_argument("--warmup", type=int, default=20, help="updates of a timed run left out of the figure")
    parser.add_argument("--seeds", default="0", help="comma list: the healthy runs, once per seed (models' seed)")
    parser.add_argument("--spike-at", type=int, default=60, help="the update whose batch is scaled by 10^4")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--norms", type=Path, default=None, help="write the healthy runs' norms here (JSON)")
    args = parser.parse_args(argv)
    if "spike" in args.only.split(",") and not 0 <= args.spike_at < args.steps:
        parser.error(f"--spike-at {args.spike_at}: the spike is planted at an update of the run, 0 to {args.steps - 1}")
    torch.set_num_threads(args.threads)
    for logger_name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric", "darts"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    models = [m for m in args.models.split(",") if m]
    parts = [p for p in args.only.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    peers.SEED = seeds[0]
    import seqstab

    print(f"machine: {_common.machine()}")
    print(f"seqstab from {Path(seqstab.__file__).parent}")
    results: dict[str, dict[str, Any]] = {m: {} for m in models}
    norms: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            for part in parts:
                where = Path(tmp) / name / part
                start = time.perf_counter()
                try:
                    with contextlib.redirect_stdout(io.StringIO()) as captured:
                        if part == "healthy":
                            runs = []
                            for seed in seeds:  # the table adds up every seed's runs
                                peers.SEED = seed
                                run = healthy(name, args.steps, where / f"seed{seed}")
                                tag = f"healthy/{name}" + (f"/seed{seed}" if seed != seeds[0] else "")
                                norms[tag] = run.pop("norms")
                                runs.append({"seed": seed, **run})
                            peers.SEED = seeds[0]
                            out = {key: sum(r[key] for r in runs) for key in ("updates", "events", "skipped")}
                            out["seeds"] = runs
                        elif part == "cost":
                            out = {s: cost(name, args.cost_steps, where / s, args.warmup, s)
                                   for s in ("defaults", "snapshot")}  # fmt: skip
                        elif part == "spike":
                            out = spike(name, args.steps, where, args.spike_at)
                            norms[f"spike/{name}"] = out.pop("norms")
                        else:
                            out = resume(name, where, 40)
                    out["console"] = [line for line in captured.getvalue().splitlines() if "seqstab" in line][:12]
                except Exception as err:  # a part that fails is a finding: say it, go on with the others
                    out = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"}
                out["seconds"] = round(time.perf_counter() - start, 1)
                results[name][part] = out
                print(f"{name} {part}: {json.dumps(out, default=str)[:3000]}", flush=True)
    if args.norms is not None:
        args.norms.write_text(json.dumps(norms))
    report(results, models, parts, args)


def report(results: dict, models: list[str], parts: list[str], args) -> None:
    print("\n## What works, per model\n")
    print(
        "| model | healthy: events / skipped | spike: event(s) | diagnosis | data factor | replay (Python / command) "
        "| resume |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in models:
        r = results[name]
        h, s, z = r.get("healthy", {}), r.get("spike", {}), r.get("resume", {})
        healthy_cell = f"{h.get('events')} / {h.get('skipped')} of {h.get('updates')}" if "updates" in h else h.get(
            "error", "")  # fmt: skip
        spike_cell = ", ".join(f"{u} {why} {act}" for u, why, act in s.get("events", [])) or s.get(
            "missed", s.get("error", ""))  # fmt: skip
        factor = f"{s['data_factor']:.3g}" if isinstance(s.get("data_factor"), float) else ""
        replayed = f"{s.get('replay_python')} / {s.get('replay_command')}" if "replay_python" in s else ""
        print(f"| {name} | {healthy_cell} | {spike_cell} | {s.get('top', '')} | {factor} | {replayed} "
              f"| {_resume_cell(z)} |")  # fmt: skip
    if "cost" in parts:
        print("\n## The callback's host cost per update (ms), its hooks timed\n")
        print("CPU time of the thread running the hooks (time.thread_time), over the updates after the warm-up;")
        print("the step is wall time (on a shared machine it includes the neighbours).\n")
        print("| model | defaults | NormClip + skip guard, snapshot armed | library step, wall (median) |")
        print("|---|---:|---:|---:|")
        for name in models:
            c = results[name].get("cost", {})
            if "defaults" not in c:
                print(f"| {name} | {c.get('error', '')} | | |")
                continue
            step = c["defaults"].get("step_ms")
            print(f"| {name} | {c['defaults']['ms_per_update']:.3f} | {c['snapshot']['ms_per_update']:.3f} | "
                  f"{f'{step:.1f}' if step else 'n/a'} |")  # fmt: skip
        for setting in ("defaults", "snapshot"):
            print(f"\nper hook (ms per call) and per station of the update core (ms per update), {setting}:")
            for name in models:
                c = results[name].get("cost", {}).get(setting, {})
                if c.get("hooks"):
                    print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in c["hooks"].items()))
                    print("    " + ", ".join(f"{k} {v:.3f}" for k, v in c.get("stations", {}).items()))


def _resume_cell(z: dict) -> str:
    if "error" in z:
        return z["error"]
    if "safe_load" in z:
        return f"darts safe load, updates {z['updates_after_resume']}/{z['expected']}"
    if "seqstab_globals" in z and "globals_with" in z:
        extra = sorted(set(z["globals_with"]) - set(z["globals_without"]))
        return (
            f"globals the callback adds: {extra or 'none'}; resume weights_only=True: "
            f"{z['updates_weights_only_True']}, =False: {z['updates_weights_only_False']} (of {z['expected']})"
        )
    if "yaml_seqstab_objects" in z:
        return (f"hparams.yaml seqstab objects {len(z['yaml_seqstab_objects'])}, ckpt seqstab globals "
                f"{z['seqstab_globals'] or 'none'}")  # fmt: skip
    return ""


if __name__ == "__main__":
    main()
