"""No host synchronisation on the hot path: every clipping policy, and a whole ``training_step`` off the monitor's
measuring steps, under ``torch.cuda.set_sync_debug_mode``.

    python benchmarks/gpu/sync_check.py OUT.json [--device cuda]

1. Policies: each policy of ``seqstab.clipping`` (the settings of tests/test_clipping.py), and ``global_norm``,
   called on the gradients of a CUDA ``nn.LSTM`` under ``set_sync_debug_mode("error")`` for 6 updates: norms from
   1e-2 to 1e3, then a gradient holding inf, then one holding nan. Any synchronisation raises; none may.
2. ``training_step``: seqstab's own tasks trained by a ``Trainer`` on the GPU, each ``training_step`` run under
   ``set_sync_debug_mode("warn")``; every synchronising call is recorded with the innermost Python frame and the
   nearest seqstab frame that led to it. ``GradMonitor`` defaults (gradient flow every 50 updates, spectra every
   100, per-module norms every ``log_every_n_steps`` = 50): updates 1 to N-1 are its off-period, update 0 measures
   everything. The documented syncs (README: "one host read per update"; ``SeqTask._scored_chunks``: one per batch
   with a mask) are ``seqstab/update.py`` ``read_back`` and ``seqstab/tasks.py`` ``_scored_chunks``; anything else on
   an off-period update is listed as unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from collections import Counter
from functools import partial

import _repo  # noqa: F401  (sys.path)
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from datamodules.synthetic import AddingProblem
from seqstab.core.clipping import AGC, AutoClip, NoClip, NormClip, PerParameterNormClip, ValueClip, ZClip, global_norm
from seqstab.core.guard import ExplosionGuard
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import LanguageModel, SequenceRegressor

POLICIES = {
    "NoClip": NoClip,
    "ValueClip(0.1)": lambda: ValueClip(0.1),
    "NormClip(0.1)": lambda: NormClip(0.1),
    "PerParameterNormClip(0.1)": lambda: PerParameterNormClip(0.1),
    "AGC(0.01)": lambda: AGC(0.01),
    "AutoClip(10)": lambda: AutoClip(10),
    "ZClip(warmup_steps=2)": lambda: ZClip(warmup_steps=2),
}
DOCUMENTED = {("seqstab/update.py", "read_back"), ("seqstab/tasks.py", "_scored_chunks")}


def check_policies(device: str) -> dict:
    results = {}
    for name, make in {**POLICIES, "global_norm": None}.items():
        policy = make() if make is not None else None
        torch.manual_seed(0)
        model = torch.nn.LSTM(4, 8).to(device)
        outcome = {"updates": 0, "error": None}
        for step in range(8):
            model.zero_grad()
            model(torch.randn(5, 2, 4, device=device))[0].pow(2).sum().mul(10.0 ** (step - 2)).backward()
            if step == 6:
                model.weight_hh_l0.grad[0, 0] = float("inf")
            if step == 7:
                model.bias_ih_l0.grad[1] = float("nan")
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                params = list(model.parameters())
                if policy is not None:
                    policy(params)
                else:
                    global_norm([p.grad for p in params])
                outcome["updates"] += 1
            except RuntimeError as e:
                outcome["error"] = f"update {step}: {e}\n{traceback.format_exc()[-1500:]}"
                break
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        outcome["pass"] = outcome["error"] is None and outcome["updates"] == 8
        results[name] = outcome
        print(f"policy {name}: {'ok' if outcome['pass'] else 'SYNC: ' + str(outcome['error']).splitlines()[0]}")
    return results


class TokenStream(SeqDataModule):
    """A random token stream in 20 rows, read in windows of 35 (stateful, no mask): the word-LM shape."""

    def __init__(self, vocab: int = 10_000, batches: int = 40):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.rows = batchify(torch.randint(0, vocab, (20 * (35 * batches + 1),), generator=g), 20)
        self.vocab = vocab

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="lm", vocab_size=self.vocab, stateful=True)

    def train_dataloader(self):
        return DataLoader(StreamWindows(self.rows[:, :-1], self.rows[:, 1:], 35), batch_size=None)


class SGDLanguageModel(LanguageModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def tasks():
    """(name, model factory, datamodule factory, syncs expected per off-period update from seqstab)."""
    yield (
        "adding: SequenceRegressor, tanh RNN 64, masked (guard with snapshot), Adam",
        lambda spec: SequenceRegressor(
            spec=spec,
            net=partial(RecurrentNet, cell="rnn", hidden_size=64, spectral_radius=1.5),
            clipping=NormClip(1.0),
            guard=ExplosionGuard(policy="warn"),
        ),
        lambda: AddingProblem(seq_len=100, num_train=2000, num_val=50, num_test=50, batch_size=50),
        2,
    )
    yield (
        "word LM: LanguageModel, 2x200 LSTM, stateful, no mask, SGD",
        lambda spec: SGDLanguageModel(
            spec=spec,
            net=partial(RecurrentNet, hidden_size=200, num_layers=2, dropout=0.2),
            dropout=0.2,
            clipping=NormClip(0.25),
        ),
        TokenStream,
        1,
    )
    yield (
        "adding: SequenceRegressor, LSTM 64, tbptt 25 (4 chunks, 1 scored), ZClip",
        lambda spec: SequenceRegressor(
            spec=spec,
            net=partial(RecurrentNet, cell="lstm", hidden_size=64),
            tbptt_steps=25,
            clipping=ZClip(warmup_steps=2),
        ),
        lambda: AddingProblem(seq_len=100, num_train=2000, num_val=50, num_test=50, batch_size=50),
        2,
    )


def frame_site(frame) -> str:
    path = frame.filename
    for marker in ("/seqstab/", "/datamodules/", "/pytorch_lightning/", "/lightning/", "/torch/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    return f"{path}:{frame.lineno} {frame.name}"


class SyncRecorder:
    """Within the block, every synchronising CUDA call (``set_sync_debug_mode("warn")``) is appended to ``sites`` as
    ``(innermost Python frame, nearest seqstab frame)``."""

    def __init__(self, device: str):
        self.device = device
        self.sites: list[tuple[str, str]] = []

    def hook(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        stack = [f for f in traceback.extract_stack()[:-1] if "/warnings.py" not in f.filename]
        inner = frame_site(stack[-1]) if stack else f"{filename}:{lineno}"
        ours = next((f for f in reversed(stack) if "/seqstab/" in f.filename), None)
        self.sites.append((inner, frame_site(ours) if ours else "-"))

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self.hook
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        return False


def check_instrument(device: str) -> dict:
    """The recorder itself: one ``.item()`` must be seen as one sync, a device-only op as none."""
    x = torch.ones(4, device=device)
    with SyncRecorder(device) as quiet:
        x.mul_(2)
    with SyncRecorder(device) as loud:
        x.sum().item()
    ok = not quiet.sites and len(loud.sites) == 1
    print(f"instrument: device op {len(quiet.sites)} syncs, .item() {len(loud.sites)} ({'ok' if ok else 'BROKEN'})")
    return {"device_op_syncs": len(quiet.sites), "item_syncs": len(loud.sites), "item_site": loud.sites, "pass": ok}


def check_training_step(device: str, updates: int) -> dict:
    results = {}
    for name, make_model, make_data, expected in tasks():
        pl.seed_everything(0, verbose=False)
        dm = make_data()
        model = make_model(dm.spec)
        per_update: list[dict] = []
        training_step = model.training_step

        def watched(batch, batch_idx, model=model, training_step=training_step, per_update=per_update):
            first = model.updates
            recorder = SyncRecorder(device)
            try:
                with recorder:
                    return training_step(batch, batch_idx)
            finally:
                per_update.append({"first_update": first, "updates": model.updates - first, "syncs": recorder.sites})

        model.training_step = watched
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            max_steps=updates,
            max_epochs=1,
            logger=pl.loggers.TensorBoardLogger(os.environ.get("TMPDIR", "/tmp"), name="sync_check"),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            log_every_n_steps=50,
        )
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.fit(model, dm)
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"}
            print(f"{name}: FAILED {type(e).__name__}: {e}")
            continue
        off = [b for b in per_update if b["first_update"] > 0 and b["updates"] > 0]
        on = [b for b in per_update if b["first_update"] == 0]
        sites = Counter(s for b in off for s in b["syncs"])
        ours = Counter(s for s in sites.elements() if _seqstab_site(s[1]) in DOCUMENTED)
        unexpected = {
            f"{inner} <- {seq}": n for (inner, seq), n in sites.items() if _seqstab_site(seq) not in DOCUMENTED
        }
        n_updates = sum(b["updates"] for b in off)
        result = {
            "off_period_batches": len(off),
            "off_period_updates": n_updates,
            "syncs_per_off_period_batch": [len(b["syncs"]) for b in off],
            "documented_syncs_per_batch_expected": expected,
            "sites_off_period": {f"{inner} <- {seq}": n for (inner, seq), n in sites.items()},
            "unexpected_off_period": unexpected,
            "sites_update0": dict(Counter(f"{i} <- {s}" for b in on for i, s in b["syncs"])),
            "documented_ok": bool(off)
            and all(sum(1 for s in b["syncs"] if _seqstab_site(s[1]) in DOCUMENTED) == expected for b in off),
        }
        result["pass"] = result["documented_ok"] and not unexpected
        results[name] = result
        counts = sorted(set(result["syncs_per_off_period_batch"]))
        print(
            f"{name}: {len(off)} off-period batches, syncs per batch {counts} (documented {expected}), "
            f"seqstab's {sum(ours.values())}, unexpected {unexpected or 'none'}"
        )
    return results


def _seqstab_site(site: str) -> tuple[str, str] | None:
    """``("seqstab/update.py", "read_back")`` from ``"seqstab/update.py:190 read_back"``."""
    if not site.startswith("seqstab/"):
        return None
    where, _, func = site.partition(" ")
    return where.rsplit(":", 1)[0], func


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--updates", type=int, default=12)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    results = {
        "instrument": check_instrument(args.device),
        "policies": check_policies(args.device),
        "training_step": check_training_step(args.device, args.updates),
    }
    results["pass"] = results["instrument"]["pass"] and all(
        r.get("pass") for part in ("policies", "training_step") for r in results[part].values()
    )
    _repo.write_json(args.out, results)
    print(f"pass: {results['pass']}")
    sys.exit(0 if results["pass"] else 1)


if __name__ == "__main__":
    main()
