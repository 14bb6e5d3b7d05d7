"""The update core in a training loop of one's own: plain torch, no Lightning, a StaticRun for the run around it."""

from __future__ import annotations

import struct
from functools import partial

import pytest
import torch
from torch import nn

from seqstab.core.clipping import AutoClip, NormClip
from seqstab.core.guard import ExplosionGuard
from seqstab.core.monitor import GradMonitor
from seqstab.core.record import Action, StaticRun
from seqstab.core.update import UpdateCore


class ListLogger:
    def __init__(self):
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


def own_loop(core: UpdateCore, updates: int, run_dir=None):
    """An LSTM regressor trained by a hand-written loop around the core; the state around every update."""
    torch.manual_seed(0)
    lstm, head = nn.LSTM(2, 8, batch_first=True), nn.Linear(8, 1)
    model = nn.ModuleDict({"lstm": lstm, "head": head})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    logger = ListLogger()
    run = StaticRun(model, loggers=[logger], optimizer=optimizer, run_dir=run_dir, log_every_n_steps=2)
    params = list(model.parameters())
    seen = []
    for _ in range(updates):
        x, y = torch.randn(4, 6, 2), torch.randn(4, 1)
        core.arm(run)
        out, _ = lstm(x)
        loss = nn.functional.mse_loss(head(out[:, -1]), y)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt_before = {i: {n: t.clone() for n, t in s.items()} for i, s in optimizer.state_dict()["state"].items()}
        grads: list[torch.Tensor] = []

        def backward(loss, grads=grads):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads.append(torch.nn.utils.get_total_norm([p.grad for p in params]).clone())

        update = core.update(run, params, loss, backward=backward, step=optimizer.step)
        core.flush(run)  # read back now, to look at this update (a loop of one's own needs it only to log)
        run.global_step += 1
        after = {k: v.clone() for k, v in model.state_dict().items()}
        opt_after = {i: {n: t.clone() for n, t in s.items()} for i, s in optimizer.state_dict()["state"].items()}
        seen.append((update, grads[0].item(), before, after, opt_before, opt_after))
    return seen, logger


def test_the_core_measures_clips_guards_and_logs_in_a_loop_of_ones_own(tmp_path):
    guard = ExplosionGuard(policy="skip", max_norm=0.3, snapshot=False)  # some updates are skipped
    monitor = GradMonitor(grad_flow_every_n_steps=3)
    seen, logger = own_loop(UpdateCore(NormClip(max_norm=0.1), guard, monitor), 12, run_dir=tmp_path)
    actions = [update.action for update, *_ in seen]
    assert Action.SKIP in actions and Action.STEP in actions
    for update, norm, before, after, opt_before, opt_after in seen:
        assert f32(update.values["grad/norm_total"]) == f32(norm)  # the unclipped norm, as get_total_norm has it
        assert update.values["grad/norm_total_clipped"] == pytest.approx(min(norm, 0.1), rel=1e-6)
        if update.action is Action.SKIP:  # neither the weights nor Adam's moments and step count moved
            assert all(torch.equal(before[k], after[k]) for k in before)
            assert opt_before.keys() == opt_after.keys()
            assert all(torch.equal(opt_before[i][n], opt_after[i][n]) for i in opt_before for n in opt_before[i])
        else:
            assert not all(torch.equal(before[k], after[k]) for k in before)
    assert [step for step, _ in logger.rows if "train/loss" in _] == list(range(12))
    assert all("train/lr" in row and "explosion/events" in row for _, row in logger.rows if "train/loss" in row)
    assert [s for s, row in logger.rows if "grad/norm/lstm.hh" in row] == [0, 2, 4, 6, 8, 10]  # every 2nd update
    assert [s for s, row in logger.rows if "grad_flow/growth" in row] == [0, 3, 6, 9]  # the LSTM, hooked
    lines = (tmp_path / "explosions.jsonl").read_text().splitlines()
    assert len(lines) == guard.events == actions.count(Action.SKIP)


def test_the_cores_state_round_trips_and_clips_on_as_it_would_have():
    straight = UpdateCore(AutoClip(percentile=50), ExplosionGuard(snapshot=False))
    own_loop(straight, 8)
    first = UpdateCore(AutoClip(percentile=50), ExplosionGuard(snapshot=False))
    own_loop(first, 4)
    state = first.state_dict()
    assert state["updates"] == 4 and state["clipping"]["steps"] == 4
    again = UpdateCore(AutoClip(percentile=50), ExplosionGuard(snapshot=False))
    again.load_state_dict(state)
    assert again.updates == 4 and again.guard.state_dict() == first.guard.state_dict()
    assert torch.equal(again.clipping.state_dict()["norms"], first.clipping.state_dict()["norms"])


def test_a_threshold_far_below_the_first_norm_warns_once():
    with pytest.warns(UserWarning, match="clip threshold 1e-06 is .*x below the first gradient norm"):
        own_loop(UpdateCore(NormClip(max_norm=1e-6)), 2)


def test_read_back_gives_each_update_its_values_in_the_order_of_its_fields_whatever_their_kinds():
    """``_read_back`` stacks the 0-dim tensors by kind (value or code, dtype, device), not field by field: each update
    still gets its own values, float32 values rounded as logged, codes as they were, and the tags in the order the
    fields first came in the flush (a field of one update only, like the per-module norms, included)."""
    from seqstab.core.clipping import ClipResult
    from seqstab.core.guard.verdict import Verdict
    from seqstab.core.record import Update
    from seqstab.core.update import _Pending, _read_back

    f32, code = partial(torch.tensor, dtype=torch.float32), partial(torch.tensor, dtype=torch.long)

    def pending(step, measured, verdict):
        clip = ClipResult(f32(2.0 + step), f32(0.25), torch.tensor(step != 1), f32(0.25))
        return _Pending(Update(step, None, None, clip, {}), f32(4.5 + step), measured, verdict)

    third = 1 / 3  # float32 rounds it: the value read back is float32's, as float
    items = [
        pending(0, {"rnn/saturation/x": f32(0.5)}, Verdict(apply=torch.tensor(True), skipped=code(0))),
        pending(1, {"grad/norm/a": f32(third), "rnn/saturation/x": f32(0.75)}, None),
        pending(2, {"grad/norm/a": f32(1.5)}, Verdict(apply=torch.tensor(False), skipped=code(3))),
    ]
    reads = _read_back(items)
    first = ["train/loss", "grad/norm_total", "grad/norm_total_clipped", "grad/clipped", "grad/clip_threshold"]
    assert [list(r["values"]) for r in reads] == [
        [*first, "rnn/saturation/x"],
        [*first, "rnn/saturation/x", "grad/norm/a"],  # the flush's field order: saturation came first (update 0)
        [*first, "grad/norm/a"],
    ]
    assert reads[1]["values"]["grad/norm/a"] == float(torch.tensor(third, dtype=torch.float32)) != third
    assert [r["values"]["train/loss"] for r in reads] == [4.5, 5.5, 6.5]
    assert [r["values"]["grad/clipped"] for r in reads] == [1.0, 0.0, 1.0]
    assert reads[0]["skipped"] == 0 and reads[2]["skipped"] == 3 and "skipped" not in reads[1]
