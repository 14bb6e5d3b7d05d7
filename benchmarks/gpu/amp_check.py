"""AMP: the clipping policy sees unscaled gradients, and a spike under 16-mixed is skipped without a crash.

    python benchmarks/gpu/amp_check.py OUT.json --work DIR [--device cuda] [--updates 24]

Both doors into the update core, each trained by a real ``Trainer`` on the adding problem (T = 100, batch 50) with
a 1×128 LSTM (cuDNN on a GPU) and ``NormClip(1.0)``:

* ``task``: ``seqstab.tasks.SequenceRegressor`` (manual optimization; seqstab unscales before clipping);
* ``callback``: a plain LightningModule (``nn.LSTM`` + ``nn.Linear``, automatic optimization) with
  ``seqstab.callbacks.GradientStability(clipping=NormClip(1.0))`` (Lightning unscales, then the callback clips).

At every update, before seqstab measures, the same loss is recomputed on a separate copy of the model holding the
same weights, in float32 with autocast off, and the float64 norm of its gradients is taken: the reference. The
pre-clip norm seqstab logs (``grad/norm_total``, read back from the TensorBoard events) must equal it within AMP
tolerance at every update without a GradScaler overflow; scaled gradients would be off by the loss scale (2^16 at
the start). ``32-true`` is the control (the reference method itself: differences ~1e-6).

Then the spike: under ``16-mixed`` the loss is multiplied by 1e10 at update 8 (the GradScaler overflows: inf
gradients) and by 1e3 at update 14 (a finite spike for the guard, unless the scaled gradients overflow too), with
``ExplosionGuard(policy="skip")``. Expected: both updates not applied, the scaler's scale lowered after an overflow,
the run finishes, its weights finite, and updates after the spikes applied again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import _repo  # noqa: F401  (sys.path)
import pytorch_lightning as pl
import torch
from torch import nn

from datamodules.synthetic import AddingProblem
from seqstab.core.clipping import NormClip
from seqstab.core.guard import ExplosionGuard
from seqstab.core.monitor import GradMonitor
from seqstab.lightning.callbacks import GradientStability
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
# Largest relative difference |logged - reference| / reference accepted per precision. fp16 keeps 11 significant
# bits, bf16 8; over a 100-step recurrence the gradient's norm drifts by up to a few parts in 100 under bf16.
TOLERANCE = {"32-true": 1e-4, "16-mixed": 2e-2, "bf16-mixed": 5e-2}
SPIKES = {8: 1e10, 14: 1e3}
HIDDEN = 128


def data(updates: int) -> AddingProblem:
    return AddingProblem(seq_len=100, num_train=50 * updates, num_val=50, num_test=50, batch_size=50, seed=0)


def make_task(spec, guard: ExplosionGuard | None) -> SequenceRegressor:
    return SequenceRegressor(
        spec=spec,
        net=partial(RecurrentNet, cell="lstm", hidden_size=HIDDEN),
        clipping=NormClip(1.0),
        guard=guard,
        monitor=GradMonitor(grad_flow_every_n_steps=4, spectrum_every_n_steps=None),
    )


class PlainLSTM(pl.LightningModule):
    """A LightningModule of one's own: automatic optimization, no seqstab inside; a loss spike at given batches."""

    def __init__(self, hidden: int = HIDDEN, spikes: dict[int, float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.spikes = dict(spikes or {})

    def loss_of(self, batch) -> torch.Tensor:
        out, _ = self.lstm(batch["x"])
        err = (self.head(out) - batch["y"]).pow(2).squeeze(-1)  # (B, L)
        mask = batch["mask"].to(err.dtype)
        return (err * mask).sum() / mask.sum()

    def training_step(self, batch, batch_idx):
        loss = self.loss_of(batch)
        return loss * self.spikes[batch_idx] if batch_idx in self.spikes else loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def reference_norm(loss_fn, device_type: str) -> float:
    """float64 norm of the float32 gradients of ``loss_fn()`` (autocast off), over the parameters it returns."""
    with torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
        loss, params = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    norms = [g.double().norm() for g in grads if g is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def trainer(device: str, precision: str, updates: int, logdir: Path, name: str, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=updates,
        max_epochs=1,
        logger=pl.loggers.TensorBoardLogger(str(logdir), name=name, default_hp_metric=False),
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=4,
    )


def run_task(device: str, precision: str, updates: int, work: Path, spikes: dict[int, float] | None = None) -> dict:
    pl.seed_everything(0, verbose=False)
    dm = data(updates)
    guard = ExplosionGuard(policy="skip", snapshot=False) if spikes else None
    model = make_task(dm.spec, guard)
    ref = make_task(dm.spec, None).to(device)
    records: list[dict] = []
    update_core = model.core.update

    def measured(run, params, loss, **kwargs):
        chunk, hidden = kwargs.get("chunk"), kwargs.get("hidden_in")
        ref.load_state_dict(model.state_dict())
        ref.train()

        def loss_fn():
            loss_r, _ = ref.chunk_loss(chunk, hidden)
            return loss_r, [p for p in ref.parameters() if p.requires_grad]

        reference = reference_norm(loss_fn, device)
        scale = run.loss_scale
        scale_before = float(scale) if scale is not None else None
        update = update_core(run, params, loss, **kwargs)
        scale = run.loss_scale
        records.append(
            {
                "update": update.step,
                "logged": update.values["grad/norm_total"],
                "reference": reference,
                "overflow": update.values.get("amp/overflow"),
                "action": update.action.value,
                "scale_before": scale_before,
                "scale_after": float(scale) if scale is not None else None,
                "loss": update.values["train/loss"],
            }
        )
        return update

    model.core.update = measured
    if spikes:
        chunk_loss = model.chunk_loss

        def spiky(chunk, hidden):
            loss, new_hidden = chunk_loss(chunk, hidden)
            factor = spikes.get(model.updates)
            return (loss * factor if factor else loss), new_hidden

        model.chunk_loss = spiky
    name = f"task_{precision}" + ("_spike" if spikes else "")
    fit(trainer(device, precision, updates, work, name), model, dm)
    return finish(records, work / name, model, spikes, applied=model.core.applied, attempted=model.core.updates)


def run_callback(device: str, precision: str, updates: int, work: Path, spikes: dict[int, float] | None = None):
    pl.seed_everything(0, verbose=False)
    dm = data(updates)
    module = PlainLSTM(spikes=spikes)
    ref = PlainLSTM().to(device)
    guard = ExplosionGuard(policy="skip", snapshot=False) if spikes else None
    stability = GradientStability(clipping=NormClip(1.0), guard=guard)
    records: list[dict] = []
    update_core = stability.core.update

    def measured(run, params, loss, **kwargs):
        batch = kwargs.get("chunk")
        ref.load_state_dict(module.state_dict())
        reference = reference_norm(lambda: (ref.loss_of(batch), list(ref.parameters())), device)
        scale = run.loss_scale
        scale_before = float(scale) if scale is not None else None
        update = update_core(run, params, loss, **kwargs)
        records.append(
            {
                "update": update.step,
                "logged": update.values["grad/norm_total"],
                "reference": reference,
                "overflow": update.values.get("amp/overflow"),
                "action": update.action.value,
                "scale_before": scale_before,
                "loss": update.values["train/loss"],
            }
        )
        return update

    stability.core.update = measured
    name = f"callback_{precision}" + ("_spike" if spikes else "")
    fit(trainer(device, precision, updates, work, name, [stability]), module, dm)
    for rec, nxt in zip(records, records[1:], strict=False):
        rec["scale_after"] = nxt["scale_before"]
    return finish(records, work / name, module, spikes, applied=stability.core.applied, attempted=stability.updates)


def fit(t: pl.Trainer, model, dm) -> None:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        t.fit(model, dm)
    print(sink.getvalue()[-2000:], end="")


def finish(records, logdir: Path, model, spikes, applied: int, attempted: int) -> dict:
    tags = _repo.scalars(logdir)
    logged = dict(tags.get("grad/norm_total", []))
    rel = []
    for rec in records:
        rec["tensorboard"] = logged.get(rec["update"])
        comparable = (
            not rec["overflow"]
            and (not spikes or rec["update"] not in spikes)
            and math.isfinite(rec["logged"])
            and rec["reference"] > 0
        )
        if comparable:
            value = rec["tensorboard"] if rec["tensorboard"] is not None else rec["logged"]
            rec["rel_diff"] = abs(value - rec["reference"]) / rec["reference"]
            rel.append(rec["rel_diff"])
    weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    flow_first, flow_last = dict(tags.get("grad_flow/first", [])), dict(tags.get("grad_flow/last", []))
    return {
        "records": records,
        "compared": len(rel),
        "max_rel_diff": max(rel) if rel else None,
        "median_rel_diff": statistics.median(rel) if rel else None,
        "overflows": sum(1 for r in records if r["overflow"]),
        "applied": applied,
        "attempted": attempted,
        "weights_finite": weights_finite,
        "grad_flow_step0": {"first": flow_first.get(0), "last": flow_last.get(0)},
        "logdir": str(logdir),
    }


def spike_verdict(result: dict) -> dict:
    by_update = {r["update"]: r for r in result["records"]}
    spikes = {}
    for step, factor in SPIKES.items():
        rec = by_update.get(step)
        if rec is None:
            spikes[str(step)] = {"factor": factor, "reached": False}
            continue
        lowered = rec["scale_before"] is not None and rec.get("scale_after") is not None
        spikes[str(step)] = {
            "factor": factor,
            "reached": True,
            "handled_by": "GradScaler (overflow)" if rec["overflow"] else "guard (spike)",
            "applied": rec["action"] == "step",
            "scale_before": rec["scale_before"],
            "scale_after": rec.get("scale_after"),
            "scale_lowered": bool(lowered and rec["scale_after"] < rec["scale_before"]),
            "norm": rec["logged"],
        }
    after = [r for r in result["records"] if r["update"] > max(SPIKES) and r["action"] == "step"]
    ok = (
        all(s.get("reached") and not s["applied"] for s in spikes.values())
        and all(s["scale_lowered"] for s in spikes.values() if s.get("handled_by", "").startswith("GradScaler"))
        and result["weights_finite"]
        and len(after) > 0
    )
    return {"spikes": spikes, "applied_after_spikes": len(after), "pass": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--work", required=True, help="TensorBoard logs go here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--updates", type=int, default=24)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    work = Path(args.work)
    results: dict = {"tolerance": TOLERANCE, "spikes": SPIKES, "runs": {}, "errors": {}}
    jobs = []
    for precision in args.precisions.split(","):
        jobs.append((f"task/{precision}", partial(run_task, args.device, precision, args.updates, work)))
        jobs.append((f"callback/{precision}", partial(run_callback, args.device, precision, args.updates, work)))
    if "16-mixed" in args.precisions.split(","):
        for door, fn in (("task", run_task), ("callback", run_callback)):
            jobs.append((f"{door}/16-mixed+spikes", partial(fn, args.device, "16-mixed", args.updates, work, SPIKES)))
    for name, job in jobs:
        start = time.perf_counter()
        try:
            result = job()
        except Exception as e:  # one failing run must not hide the others
            results["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        result["seconds"] = time.perf_counter() - start
        precision = name.split("/")[1].split("+")[0]
        if name.endswith("+spikes"):
            result["verdict"] = spike_verdict(result)
        elif result["max_rel_diff"] is not None:
            result["pass"] = result["max_rel_diff"] <= TOLERANCE[precision]
        results["runs"][name] = result
        summary = {k: result.get(k) for k in ("compared", "max_rel_diff", "overflows", "applied", "pass")}
        print(f"{name}: {summary} {result.get('verdict', '')}", flush=True)
    for door in ("task", "callback"):  # the same weights and batch at update 0: gradient flow vs float32
        base = results["runs"].get(f"{door}/32-true", {}).get("grad_flow_step0", {})
        for precision in PRECISIONS[1:]:
            run = results["runs"].get(f"{door}/{precision}")
            if not run:
                continue
            run["grad_flow_step0_rel_diff_vs_fp32"] = {
                k: abs(v - base[k]) / base[k]
                for k, v in run["grad_flow_step0"].items()
                if v is not None and base.get(k)
            }
    checks = [r.get("pass", r.get("verdict", {}).get("pass")) for r in results["runs"].values()]
    results["pass"] = not results["errors"] and all(c is not False for c in checks)
    _repo.write_json(args.out, results)
    print(f"pass: {results['pass']}")
    sys.exit(0 if results["pass"] else 1)


if __name__ == "__main__":
    main()
