"""Host synchronisation between logging steps, counted on a GPU: none on the update path, one read-back per flush.

    python benchmarks/gpu/sync_check.py OUT.json [--device cuda] [--updates 200] [--every 50] [--tiny]

The design (``seqstab/core/update.py``): ``UpdateCore.update`` keeps every value on the device, the guard decides
there (``seqstab/core/guard/guard.py`` ``decide``) and a withheld update is undone there (``seqstab/core/withhold.py``);
``UpdateCore.flush`` reads every value back in one transfer every ``log_every_n_steps`` updates (and at validation, a
checkpoint and the end of fit). ``tests/test_host_sync.py`` proves it on the CPU by counting device→host reads
(``tests/host_reads.py``); this script repeats it where the reads stall a queue.

Counting (``benchmarks/gpu/_syncs.py``). On CUDA, each fit runs under ``torch.cuda.set_sync_debug_mode("warn")``: every
synchronising call (a read of a device value, a blocking host→device copy, ``nonzero``, ...) warns, and each warning is
caught with its Python stack. Without CUDA (``--device cpu``, the smoke test of ``gpu_check.sh``) the same runs are
counted with ``tests/host_reads.py``'s ``DeviceReads`` instead: device→host reads of what the training computed, as if
the CPU were an accelerator (it does not see blocking host→device copies of new tensors: those counts need CUDA). Each
sync is labelled with the phase it falls in: ``startup`` (fit start to the first training batch), ``loop`` (the training
loop outside a flush), ``flush`` (inside ``UpdateCore.flush``) and ``teardown`` (after ``on_train_end``), and with its
call site: the innermost Python frame and the nearest frame of seqstab (else Lightning's).

1. ``instrument``: a device op must count 0, one ``.item()`` 1; and inside a ``Trainer.fit`` of a plain module (no
   seqstab) a probe's one ``.item()`` at one batch must be caught in the loop (the rest of that fit's loop syncs are
   Lightning's own, listed as the baseline).
2. ``policies``: every policy of ``seqstab.clipping`` (the settings of ``tests/test_host_sync.py``) and
   ``global_norm`` on the gradients of an ``nn.LSTM`` for 8 updates (norms 1e-2 to 1e5, then a gradient holding inf,
   then one holding nan): no sync at all.
3. ``runs``: ``--updates`` updates with ``log_every_n_steps = --every``, under every policy, of
   (a) ``lm``: the word LM of ``configs/lm/wikitext2_lstm.yaml`` (``LanguageModel``, 2×200 LSTM, dropout 0.2, SGD lr
       20, ``NormClip(0.25)`` in place of each policy's own threshold, default guard and monitor) on a synthetic
       token stream (20 streams × 35 tokens a batch, the WikiText-2 vocabulary size);
   (b) ``default``: ``seqstab/cli/default.yaml`` (``SequenceRegressor``, IRNN 64, adding problem T = 50,
       ``NormClip(1)``) with ``Adam(lr=3e-3, fused=True)``; and once with plain Adam and ``NormClip(1)``
       (``default-plain-adam``): its step count is a CPU tensor, so on a GPU the host decides every update there
       (``seqstab/core/withhold.py``) — one flush, so one read, per update is expected;
   (c) ``callback``: ``GradientStability(policy, ExplosionGuard(policy="skip", snapshot=True))`` on a plain
       LightningModule (LSTM 3→8 + linear, SGD momentum 0.9, automatic optimization);
   and each of the three once more with ``NormClip`` and an inf gradient injected at one update (``+event``), so one
   flush settles an event.
   Per run: syncs per update in the loop outside a flush (goal 0), syncs per flush (goal 1 for each flush that settles
   no event), the flushes (goal at most ``updates // every + 2``; the plain-Adam run on CUDA: one per update,
   expected, not a goal) and each distinct call site with its count.

Exit 1 when a goal is missed (or the instrument does not see what it must).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import _repo
import pytorch_lightning as pl
import torch
from _syncs import CudaSyncs, HostReads, Phases, counted_flushes, counter
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from datamodules.synthetic import AddingProblem
from seqstab import clipping
from seqstab.core.clipping import global_norm
from seqstab.core.guard import ExplosionGuard
from seqstab.core.update import UpdateCore
from seqstab.lightning.callbacks import GradientStability
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import LanguageModel, SequenceRegressor
from tests.helpers import Plain, quiet_trainer

# the settings of tests/test_host_sync.py; NormClip's threshold is each scenario's own
POLICIES: dict[str, Callable[[float], clipping.ClipPolicy]] = {
    "NoClip": lambda norm: clipping.NoClip(),
    "NormClip": lambda norm: clipping.NormClip(max_norm=norm),
    "ValueClip": lambda norm: clipping.ValueClip(clip_value=0.01),
    "PerParameterNormClip": lambda norm: clipping.PerParameterNormClip(max_norm=0.1),
    "AGC": lambda norm: clipping.AGC(),
    "AutoClip": lambda norm: clipping.AutoClip(percentile=10, history=64),
    "ZClip": lambda norm: clipping.ZClip(warmup_steps=5),
    "AdaGC": lambda norm: clipping.AdaGC(warmup_steps=5),
}
WIKITEXT2_VOCAB = 33_278

# -- what is trained -------------------------------------------------------------------------------------------------


class TokenStream(SeqDataModule):
    """A random token stream in 20 rows, read in windows of 35 (stateful, no mask): the word-LM batch."""

    def __init__(self, vocab: int, batches: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.rows = batchify(torch.randint(0, vocab, (20 * (35 * batches + 1),), generator=g), 20)
        self.vocab = vocab

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="lm", vocab_size=self.vocab, stateful=True)

    def train_dataloader(self):
        return DataLoader(StreamWindows(self.rows[:, :-1], self.rows[:, 1:], 35), batch_size=None)


def plain_data(updates: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, 3, generator=g), torch.randn(64, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


class Poison(pl.Callback):
    """At update ``at`` every gradient is multiplied by inf (a gradient hook on each parameter): a non-finite update
    the guard must withhold, on the device, and settle at the next flush."""

    def __init__(self, at: int, updates: Callable[[], int]):
        self.at, self.updates, self.handles = at, updates, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.updates() == self.at:
            self.handles = [p.register_hook(lambda g: g * math.inf) for p in pl_module.parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for handle in self.handles:
            handle.remove()
        self.handles = []


@dataclass
class Run:
    """One fit to count: the module, its data, more callbacks, where its update core is."""

    module: pl.LightningModule
    data: object
    callbacks: list
    core: Callable[[], UpdateCore]
    expect_flush_per_update: bool = False  # the host decides every update (plain Adam on a GPU)
    loop_goal: bool = True  # False: reads outside a flush are not a goal (plain Adam counted on the CPU)
    note: str = ""


def word_lm(policy: str, tiny: bool, updates: int) -> Run:
    vocab, hidden = (50, 16) if tiny else (WIKITEXT2_VOCAB, 200)
    data = TokenStream(vocab, updates + 1)
    net = partial(RecurrentNet, hidden_size=hidden, num_layers=2, dropout=0.2)
    task = LanguageModel(spec=data.spec, net=net, dropout=0.2, embedding_init=0.1, clipping=POLICIES[policy](0.25))
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=20.0)
    return Run(task, data, [], lambda: task.core)


def default_experiment(policy: str, tiny: bool, updates: int, fused: bool = True, cuda: bool = False) -> Run:
    data = AddingProblem(
        seq_len=20 if tiny else 50, num_train=500 if tiny else 4000, num_val=50, num_test=50, batch_size=50
    )
    net = partial(RecurrentNet, cell="rnn", nonlinearity="relu", init="identity", hidden_size=64)
    task = SequenceRegressor(spec=data.spec, net=net, clipping=POLICIES[policy](1.0))
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=3e-3, fused=fused)
    if fused:
        return Run(task, data, [], lambda: task.core)
    if cuda:
        note = "plain Adam on CUDA: its step count is a CPU tensor, so the host decides each update: a flush per update"
        return Run(task, data, [], lambda: task.core, expect_flush_per_update=True, note=note)
    note = (
        "plain Adam counted on the CPU: not a goal. The step count shares the parameters' device there, so the "
        "update is withheld by Restore, whose torch.where marks Adam's host step count as computed from the device: "
        "Adam's own .item() of it is counted; on a GPU the host decides instead (a flush per update)"
    )
    return Run(task, data, [], lambda: task.core, loop_goal=False, note=note)


def callback_run(policy: str, tiny: bool, updates: int) -> Run:
    module = Plain()
    stability = GradientStability(clipping=POLICIES[policy](1.0), guard=ExplosionGuard(policy="skip", snapshot=True))
    return Run(module, plain_data(updates), [stability], lambda: stability.core)


SCENARIOS = {
    "lm": ("word LM: LanguageModel, 2×200 LSTM, SGD lr 20, NormClip(0.25), default guard and monitor", word_lm),
    "default": ("default experiment: SequenceRegressor IRNN 64, adding T=50, Adam(fused=True)", default_experiment),
    "callback": ("GradientStability(guard skip + snapshot) on a plain LSTM module, SGD momentum 0.9", callback_run),
}


def runs(tiny: bool, updates: int, device: str):
    """``(name, scenario, policy, factory, poison_at)`` of every fit."""
    for scenario, (_, make) in SCENARIOS.items():
        for policy in POLICIES:
            yield f"{scenario}/{policy}", scenario, policy, partial(make, policy, tiny, updates), None
        if scenario == "default":
            make_plain = partial(default_experiment, "NormClip", tiny, updates, fused=False, cuda=device == "cuda")
            yield "default-plain-adam/NormClip", scenario, "NormClip", make_plain, None
        at = max(1, int(0.35 * updates))
        yield f"{scenario}+event/NormClip", scenario, "NormClip", partial(make, "NormClip", tiny, updates), at


# -- the checks ------------------------------------------------------------------------------------------------------


def trainer(device: str, updates: int, every: int, callbacks: list, root: str, name: str) -> pl.Trainer:
    return quiet_trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_steps=updates,
        logger=pl.loggers.TensorBoardLogger(root, name=name.replace("/", "_").replace("+", "_")),
        callbacks=callbacks,
        log_every_n_steps=every,
    )


def check_instrument(device: str, root: str) -> dict:
    """A device op counts 0, one ``.item()`` 1; inside a fit of a plain module (no seqstab) a probe's ``.item()`` at
    one batch is caught in the loop."""
    x = torch.ones(4, device=device)
    with counter(device) as quiet:
        quiet.on_device(x)
        quiet.phase = "loop"
        x.mul_(2)
    with counter(device) as loud:
        loud.on_device(x)
        loud.phase = "loop"
        x.sum().item()
    out = {"device_op_syncs": quiet.count(), "item_syncs": loud.count(), "item_sites": loud.sites()}

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                pl_module.out.weight.sum().item()  # the one sync this fit adds

    torch.manual_seed(0)
    module = Plain()
    syncs = counter(device)
    syncs.on_device(module)
    fit = trainer(device, 6, 50, [Phases(syncs), Probe()], root, "instrument")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), syncs:
        fit.fit(module, plain_data(6))
    loop = [s for s in syncs.syncs if s["phase"] == "loop"]
    probe = [s for s in loop if "sync_check.py" in s["site"] + s["caller"]]
    lightning = [s for s in loop if s not in probe]
    out.update(
        probe_syncs_in_fit=len(probe),
        lightning_loop_syncs_per_update=len(lightning) / 6,
        lightning_loop_sites=dict(Counter(f"{s['site']} <- {s['caller']}" for s in lightning)),
        lightning_startup_syncs=syncs.count("startup"),
        lightning_teardown_syncs=syncs.count("teardown"),
    )
    out["pass"] = out["device_op_syncs"] == 0 and out["item_syncs"] == 1 and out["probe_syncs_in_fit"] == 1
    print(
        f"instrument: a device op {out['device_op_syncs']} syncs, .item() {out['item_syncs']}, a probe's .item() "
        f"inside Trainer.fit {out['probe_syncs_in_fit']} (expected 0, 1, 1): {'ok' if out['pass'] else 'BROKEN'}; "
        f"Lightning alone (plain module, automatic optimization): {out['lightning_loop_syncs_per_update']:.2f} "
        f"syncs per update in its loop {out['lightning_loop_sites'] or ''}"
    )
    return out


def check_policies(device: str) -> dict:
    """Every policy and ``global_norm`` on an LSTM's gradients, 8 updates (the last two inf, nan): no sync."""
    results = {}
    for name, make in {**{n: partial(m, 1.0) for n, m in POLICIES.items()}, "global_norm": None}.items():
        policy = make() if make is not None else None
        torch.manual_seed(0)
        model = nn.LSTM(4, 8).to(device)
        syncs = counter(device)
        error = None
        for step in range(8):
            model.zero_grad()
            model(torch.randn(5, 2, 4, device=device))[0].pow(2).sum().mul(10.0 ** (step - 2)).backward()
            if step == 6:
                model.weight_hh_l0.grad[0, 0] = float("inf")
            if step == 7:
                model.bias_ih_l0.grad[1] = float("nan")
            params = list(model.parameters())
            syncs.on_device(model, [p.grad for p in params])
            syncs.phase = f"update {step}"
            try:
                with syncs:
                    policy(params) if policy is not None else global_norm([p.grad for p in params])
            except Exception as e:  # noqa: BLE001 (reported, and the policy fails)
                error = f"update {step}: {type(e).__name__}: {e}"
                break
        results[name] = {"syncs": syncs.count(), "sites": syncs.sites(), "error": error}
        results[name]["pass"] = error is None and not syncs.count()
        print(f"policy {name}: {syncs.count()} syncs in 8 updates (inf at 7, nan at 8) {error or ''}".rstrip())
    return results


def check_run(name: str, scenario: str, policy: str, make, poison_at: int | None, args, root: str) -> dict:
    pl.seed_everything(0, verbose=False)
    run = make()
    syncs = counter(args.device)
    syncs.updates = lambda: run.core().updates
    callbacks = [Phases(syncs), *run.callbacks]
    if poison_at is not None:
        callbacks.append(Poison(poison_at, lambda: run.core().updates))
    syncs.on_device(run.module)
    fit = trainer(args.device, args.updates, args.every, callbacks, root, name)
    out = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), counted_flushes(syncs), syncs:
            fit.fit(run.module, run.data)
    except Exception as e:  # noqa: BLE001 (reported; the run fails)
        print(f"{name}: FAILED {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}", "pass": False}
    seconds = time.perf_counter() - start
    core = run.core()
    flushes = syncs.flushes
    quiet = [f["syncs"] for f in flushes if not f["events"]]
    loop = [s for s in syncs.syncs if s["phase"] == "loop"]
    limit = core.updates if run.expect_flush_per_update else args.updates // args.every + 2
    result = {
        "scenario": scenario,
        "policy": policy,
        "event_injected_at": poison_at,
        "updates": core.updates,
        "applied": core.applied,
        "summary": core.summary(),
        "seconds": seconds,
        "every": args.every,
        "loop_syncs": len(loop),
        "loop_syncs_per_update": len(loop) / max(core.updates, 1),
        "loop_sync_updates": sorted({s["update"] for s in loop if s["update"] is not None}),
        "flushes": len(flushes),
        "empty_flushes": syncs.empty_flushes,
        "syncs_per_flush": [f["syncs"] for f in flushes],
        "events_per_flush": [f["events"] for f in flushes],
        "flush_updates": [f["updates"] for f in flushes],
        "flushes_expected_at_most": limit,
        "expect_flush_per_update": run.expect_flush_per_update,
        "loop_goal": run.loop_goal,
        "flush_per_update": len(flushes) == core.updates and all(n == 1 for n in (f["updates"] for f in flushes)),
        "events": core.guard.events if core.guard is not None else 0,
        "startup_syncs": syncs.count("startup"),
        "teardown_syncs": syncs.count("teardown"),
        "sites": {phase: syncs.sites(phase) for phase in ("loop", "flush", "startup", "teardown")},
    }
    goals = {
        "updates_done": core.updates == args.updates,
        "no_sync_outside_a_flush": not loop or not run.loop_goal,
        "one_sync_per_quiet_flush": bool(quiet) and all(n == 1 for n in quiet),
        "flushes_within_limit": len(flushes) <= limit,
    }
    if poison_at is not None:
        goals["event_settled"] = result["events"] >= 1 and core.applied < core.updates
    result["goals"] = goals
    result["pass"] = all(goals.values())
    missed = [k for k, v in goals.items() if not v]
    per_flush = Counter(result["syncs_per_flush"])
    print(
        f"{name}: {core.summary()}; {len(flushes)} flushes (syncs in each: "
        + ", ".join(f"{n}×{k}" for k, n in sorted(per_flush.items()))
        + f"; events settled {sum(result['events_per_flush'])}); outside a flush {len(loop)} syncs "
        f"({result['loop_syncs_per_update']:.3f} per update); start-up {result['startup_syncs']}, teardown "
        f"{result['teardown_syncs']}; {seconds:.1f} s: " + ("ok" if not missed else "MISSED " + ", ".join(missed)),
        flush=True,
    )
    if run.note:
        result["note"] = run.note
        print(f"    ({run.note}; {len(flushes)} flushes for {core.updates} updates)")
    shown = ["loop"] + (["flush"] if any(n != 1 for n in result["syncs_per_flush"]) else [])
    for where in shown:  # the sites of what is not the one read-back of a flush
        for site, n in result["sites"][where].items():
            print(f"    {where}: {n} × {site}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--updates", type=int, default=200, help="updates per run")
    parser.add_argument("--every", type=int, default=50, help="log_every_n_steps: a flush every this many updates")
    parser.add_argument("--tiny", action="store_true", help="tiny models (the CPU smoke test of gpu_check.sh)")
    parser.add_argument("--only", help="comma list of scenarios (lm, default, callback) to run; default all")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA here (counts of CUDA syncs need CUDA; --device cpu counts host reads)")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # no "GPU available" lines between runs
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    what = CudaSyncs.what if args.device == "cuda" else HostReads.what
    print(f"counting: {what}")
    print(f"{args.updates} updates a run, log_every_n_steps {args.every}; {'tiny models' if args.tiny else ''}")
    with tempfile.TemporaryDirectory(prefix="sync_check_") as root:
        results: dict = {"device": args.device, "counting": what, "updates": args.updates, "every": args.every,
                         "tiny": args.tiny, "scenarios": {k: v[0] for k, v in SCENARIOS.items()}}  # fmt: skip
        if args.device == "cuda":
            results["gpu"] = torch.cuda.get_device_name()
            results["torch"] = torch.__version__
        results["instrument"] = check_instrument(args.device, root)
        results["policies"] = check_policies(args.device)
        results["runs"] = {}
        for name, scenario, policy, make, poison_at in runs(args.tiny, args.updates, args.device):
            if scenario in only:
                results["runs"][name] = check_run(name, scenario, policy, make, poison_at, args, root)
    results["pass"] = results["instrument"]["pass"] and all(
        r.get("pass") for part in ("policies", "runs") for r in results[part].values()
    )
    _repo.write_json(args.out, results)
    failed = [n for part in ("policies", "runs") for n, r in results[part].items() if not r.get("pass")]
    print(f"pass: {results['pass']}" + (f" (missed: {', '.join(failed)})" if failed else ""))
    sys.exit(0 if results["pass"] else 1)


if __name__ == "__main__":
    main()
