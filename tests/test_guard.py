"""The explosion guard: what it flags, what skip / stop / warn do to the weights, events, checkpoints, cost."""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from datamodules.synthetic import AddingProblem
from seqstab.clipping import NoClip
from seqstab.errors import ConfigError
from seqstab.guard import Action, ExplosionGuard, NonFiniteWeightsError
from seqstab.nets import RecurrentNet
from seqstab.tasks import SequenceRegressor, Update
from seqstab.train import main
from tests.helpers import REPO, TinyStream, quiet_trainer, scalars

EXPLODE = REPO / "configs" / "explode" / "adding_rnn.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast, and two spin-waiting threads crawl on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def guard_with(norms: list[float], **kwargs) -> ExplosionGuard:
    guard = ExplosionGuard(**kwargs)
    guard.load_state_dict({"norms": norms})
    return guard


def test_detect_spike_against_running_median():
    guard = guard_with([1.0, 2.0, 3.0, 4.0, 100.0], spike_factor=10, min_history=5)  # median 3
    assert guard.detect(29.0) == (None, 3.0)
    assert guard.detect(31.0) == ("spike", 3.0)
    assert guard.detect(math.inf)[0] == "non-finite"
    assert guard.detect(math.nan)[0] == "non-finite"


def test_no_spike_before_min_history_but_non_finite_and_max_norm_always():
    guard = guard_with([1.0, 1.0], spike_factor=10, min_history=5, max_norm=1e6)
    assert guard.detect(1e5) == (None, None)  # 1e5x the median, but no baseline yet
    assert guard.detect(2e6)[0] == "max_norm"
    assert guard.detect(math.nan)[0] == "non-finite"
    assert ExplosionGuard(spike_factor=None).detect(1e30) == (None, None)


def test_window_is_bounded_and_round_trips_through_state_dict():
    guard = guard_with([float(i) for i in range(1, 200)], window=50)
    state = guard.state_dict()
    assert state["norms"] == [float(i) for i in range(150, 200)]
    assert all(type(v) in (int, float, str, list, type(None)) for v in state.values())  # plain: weights_only loads it
    clone = ExplosionGuard(window=50)
    clone.load_state_dict(state)
    assert clone.detect(1745.0) == guard.detect(1745.0) == (None, 174.5)  # median of 150..199, times 10
    assert clone.detect(1746.0) == guard.detect(1746.0) == ("spike", 174.5)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"policy": "explode"}, "policy='explode'"),
        ({"spike_factor": 1.0}, "spike_factor=1.0"),
        ({"window": 0}, "window=0"),
        ({"min_history": 80}, "min_history=80"),
        ({"max_norm": -1}, "max_norm=-1"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        ExplosionGuard(**kwargs)


# -- in a training run ----------------------------------------------------------------------------------------


class PlantNaN(NoClip):
    """Measures like NoClip; at update ``at`` it first puts a NaN into one gradient (a planted non-finite update)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def clip(self, params):
        if self.calls == self.at:
            params[0].grad.view(-1)[0] = math.nan
        self.calls += 1
        return super().clip(params)


class WeightsAtCheck(ExplosionGuard):
    """The guard under test, keeping a copy of the weights and optimizer state each update started from."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weights, self.opt_states, self.actions = [], [], []

    def check(self, run, update):
        self.weights.append({k: v.detach().clone() for k, v in run.module.state_dict().items()})
        state = run.optimizer.state_dict()["state"]
        self.opt_states.append({k: {n: t.clone() for n, t in s.items()} for k, s in state.items()})
        action = super().check(run, update)
        self.actions.append(action)
        return action


def tiny_task(guard, clipping, **kwargs) -> SequenceRegressor:
    data = TinyStream(num_streams=3, length=24, window=8)
    torch.manual_seed(0)
    task = SequenceRegressor(
        net=partial(RecurrentNet, cell="rnn", hidden_size=8), spec=data.spec, guard=guard, clipping=clipping, **kwargs
    )
    return task, data


def bitwise_equal(a: dict, b: dict) -> bool:
    def bits(t):
        return t.reshape(-1).view(torch.uint8)

    return a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)


@pytest.mark.parametrize("policy", ["skip", "warn"])
def test_planted_non_finite_update_leaves_weights_bitwise_unchanged(policy):
    guard = WeightsAtCheck(policy=policy)
    task, data = tiny_task(guard, PlantNaN(at=2))
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=0.01)
    quiet_trainer(max_epochs=2).fit(task, data)
    assert guard.actions[2] is Action.SKIP and guard.events >= 1
    assert bitwise_equal(guard.weights[2], guard.weights[3])  # update 2 was not applied ...
    assert guard.opt_states[2].keys() == guard.opt_states[3].keys()
    for k in guard.opt_states[2]:  # ... not even to Adam's moments or step count
        assert bitwise_equal(guard.opt_states[2][k], guard.opt_states[3][k])
    assert not bitwise_equal(guard.weights[1], guard.weights[2])  # while an ordinary update is
    assert all(torch.isfinite(v).all() for v in task.state_dict().values())


def test_skip_policy_drops_a_spike_and_warn_applies_it():
    for policy, applied in (("skip", False), ("warn", True)):
        guard = WeightsAtCheck(policy=policy, max_norm=1e-6)  # every update is an event
        task, data = tiny_task(guard, NoClip())
        quiet_trainer(max_steps=100, max_epochs=1).fit(task, data)
        assert guard.events == 3 and task.trainer.global_step == (3 if applied else 0)
        assert bitwise_equal(guard.weights[0], guard.weights[1]) == (not applied)


def test_stop_ends_the_run_cleanly_with_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXPLODE), "--model.guard.policy", "stop", *QUIET]
    args += ["--data.seq_len", "50", "--data.num_train", "1000", "--data.num_val", "50", "--trainer.max_epochs", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = [line for line in out.splitlines() if "explosion guard" in line]
    assert len(summary) == 1 and "stopping the run" in summary[0] and "python -m seqstab.replay" in summary[0]
    run_dir = tmp_path / "runs" / "seqstab" / "version_0"
    events = [json.loads(line) for line in (run_dir / "explosions.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["action"] == "stop"
    series = scalars(run_dir)
    assert [s for s, _ in series["grad/norm_total"]][-1] == events[0]["update"]  # nothing after the stop
    assert series["explosion/events"][-1][1] == 1.0
    checkpoints = list(run_dir.rglob("*.ckpt"))
    assert checkpoints
    for ckpt in checkpoints:  # the run saved its (finite) weights on the way out
        state = torch.load(ckpt, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
        assert state["seqstab"]["guard"]["events"] == 1


def run_explode(tmp_path, capsys, *extra: str) -> tuple[int, list[str]]:
    args = ["fit", "--config", str(EXPLODE), *QUIET, "--data.seq_len", "30", "--data.num_train", "200"]
    args += ["--data.num_val", "50", "--trainer.max_epochs", "2", *extra]
    code = main(args)
    return code, capsys.readouterr().out.strip().splitlines()


def test_the_last_line_says_how_many_updates_were_applied(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, lines = run_explode(tmp_path, capsys, "--model.clipping", "NormClip")
    assert code == 0 and lines[-1] == "seqstab: 8 of 8 updates applied"


def test_a_run_that_applied_no_update_says_so_and_exits_3(tmp_path, monkeypatch, capsys):
    """Every update flagged and skipped: the run goes on to max_epochs, but ends with exit code 3."""
    monkeypatch.chdir(tmp_path)
    code, lines = run_explode(tmp_path, capsys, "--model.guard.policy", "skip", "--model.guard.max_norm", "1e-9")
    assert code == 3 and lines[-1] == "seqstab: 0 of 8 updates applied, 8 held back by the guard"


def test_max_consecutive_skips_stops_the_run_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra = ["--model.guard.policy", "skip", "--model.guard.max_norm", "1e-9", "--model.guard.max_consecutive_skips"]
    code, lines = run_explode(tmp_path, capsys, *extra, "3")
    assert code == 3 and lines[-1] == "seqstab: 0 of 3 updates applied, 3 held back by the guard"
    assert any("3 updates in a row were not applied (max_consecutive_skips=3): stopping the run" in x for x in lines)
    events = (tmp_path / "runs" / "seqstab" / "version_0" / "explosions.jsonl").read_text().splitlines()
    assert len(events) == 3


def test_max_consecutive_skips_counts_only_skips_in_a_row():
    guard = ExplosionGuard(policy="skip", max_norm=5.0, snapshot=False, max_consecutive_skips=2)
    clip = NoClip().clip([])
    actions = [guard.check(None, Update(i, {}, None, clip, {"grad/norm_total": n})) for i, n in enumerate([9, 1, 9, 9])]
    assert actions == [Action.SKIP, Action.STEP, Action.SKIP, Action.STOP]
    with pytest.raises(ConfigError, match="max_consecutive_skips=0: must be an integer >= 1"):
        ExplosionGuard(max_consecutive_skips=0)


def test_events_are_logged_to_tensorboard_and_jsonl(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXPLODE), *QUIET, "--trainer.max_epochs", "1"]
    args += ["--data.seq_len", "50", "--data.num_train", "750", "--data.num_val", "50"]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / "seqstab" / "version_0"
    events = [json.loads(line) for line in (run_dir / "explosions.jsonl").read_text().splitlines()]
    assert events, "the unclipped config did not explode"
    assert any(e["norm"] in ("inf", "nan") or e["norm"] > 1e6 for e in events)
    names = {name for name, _ in SequenceRegressor(spec=AddingProblem(num_train=1).spec).named_parameters()}
    assert all(e["module"] in names for e in events)
    assert events[0]["snapshot"] == f"snapshot_update_{events[0]['update']}.pt"
    assert (run_dir / events[0]["snapshot"]).is_file()
    count = dict(scalars(run_dir)["explosion/events"])
    assert count[events[0]["update"]] == 1.0 and count[max(count)] == len(events)
    assert count[events[0]["update"] - 1] == 0.0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    texts = acc.Tensors("explosion/event/text_summary")
    assert [t.step for t in texts] == [e["update"] for e in events]
    assert b"module" in texts[0].tensor_proto.string_val[0]


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    task, data = tiny_task(ExplosionGuard(), NoClip())
    trainer = quiet_trainer(max_steps=1, default_root_dir=tmp_path)
    trainer.fit(task, data)
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    assert torch.load(tmp_path / "good.ckpt", weights_only=True)["seqstab"]["guard"]["norms"]
    with torch.no_grad():
        task.net.layers[0].weight_hh_l0[0, 0] = math.inf
    with pytest.raises(NonFiniteWeightsError, match="net.layers.0.weight_hh_l0"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_default_guard_warns_and_never_applies_non_finite():
    task, data = tiny_task(None, PlantNaN(at=1))
    assert isinstance(task.guard, ExplosionGuard) and task.guard.policy == "warn" and not task.guard.snapshot
    quiet_trainer(max_epochs=1).fit(task, data)
    assert task.guard.events >= 1 and task.trainer.global_step == 2  # 3 updates, the planted one skipped
    assert all(torch.isfinite(v).all() for v in task.state_dict().values())


def test_check_costs_microseconds_when_nothing_happens():
    """The per-update cost of a quiet guard: a comparison, an append and a median of <= 50 floats."""
    guard = ExplosionGuard()
    clip = NoClip().clip([])
    updates = [Update(i, {}, None, clip, {"grad/norm_total": 1.0 + (i % 7) / 10}) for i in range(2000)]
    start = time.perf_counter()
    for update in updates:
        assert guard.check(None, update) is Action.STEP
    per_update = (time.perf_counter() - start) / len(updates)
    assert per_update < 200e-6, f"{per_update * 1e6:.1f} µs per update"  # measured ~3 µs; generous under load


@pytest.mark.parametrize("seq_len", [100, 200, 400])
def test_unclipped_config_explodes_at_every_length(seq_len, tmp_path, monkeypatch):
    """configs/explode/adding_rnn.yaml: a guard event above 1e6 (or non-finite) within 10 updates (T = 50: above)."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXPLODE), *QUIET, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"]
    args += ["--data.seq_len", str(seq_len), "--data.num_train", "500", "--trainer.enable_checkpointing", "false"]
    assert main(args) == 0
    lines = (tmp_path / "runs" / "seqstab" / "version_0" / "explosions.jsonl").read_text().splitlines()
    assert any(e["norm"] in ("inf", "nan") or e["norm"] > 1e6 for e in map(json.loads, lines))


def first_event(where, *extra: str) -> tuple[dict, dict]:
    """Train 2 updates of the explode config, every norm an event; the first event and the run's scalars."""
    args = ["fit", "--config", str(EXPLODE), *QUIET, "--trainer.max_steps", "2", "--trainer.logger.save_dir", where]
    args += ["--data.seq_len", "50", "--data.num_train", "750", "--data.num_val", "50"]
    args += ["--model.guard.snapshot", "false", "--model.guard.max_norm", "1e-6", *extra]
    assert main(args) == 0
    run_dir = next(Path(where).glob("seqstab/version_*"))
    return json.loads((run_dir / "explosions.jsonl").read_text().splitlines()[0]), scalars(run_dir)


@pytest.mark.parametrize(
    "clipping",
    [
        ["--model.clipping", "seqstab.clipping.NormClip", "--model.clipping.max_norm", "1e-3"],
        ["--model.clipping", "seqstab.clipping.ValueClip", "--model.clipping.clip_value", "1e-5"],
        ["--model.clipping", "seqstab.clipping.AGC", "--model.clipping.clip_factor", "1e-4"],
    ],
)
def test_event_names_the_module_by_its_pre_clip_norm(tmp_path, monkeypatch, clipping):
    """Under clipping an event reports what exploded, not what the clip left: the same module and norm as an
    unclipped run at the same (first) update."""
    monkeypatch.chdir(tmp_path)
    reference, _ = first_event("unclipped", "--model.clipping", "seqstab.clipping.NoClip")
    event, series = first_event("clipped", *clipping)
    assert event["update"] == reference["update"] == 0
    assert series["grad/clipped"][0] == (0, 1.0)  # the policy did change this update's gradient
    assert (event["module"], event["module_norm"]) == (reference["module"], reference["module_norm"])
