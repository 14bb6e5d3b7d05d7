"""The explosion guard: what it flags, what skip / stop / warn do to the weights, events, checkpoints, cost."""

from __future__ import annotations

import io
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from datamodules.synthetic import AddingProblem
from seqstab.cli.train import main
from seqstab.core.clipping import NoClip
from seqstab.core.errors import ConfigError
from seqstab.core.guard import Action, ExplosionGuard, NonFiniteWeightsError
from seqstab.core.record import StaticRun, Update
from seqstab.core.update import UpdateCore
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import REPO, TinyStream, quiet_trainer, scalars

EXPLODE = REPO / "configs" / "explode" / "adding_rnn.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def guard_with(norms: list[float], **kwargs) -> ExplosionGuard:
    guard = ExplosionGuard(**kwargs)
    guard.load_state_dict({"norms": norms})
    return guard


HOST_RULE = {"policy": "warn", "snapshot": False}  # a guard whose events change nothing: the rule runs on the host


@pytest.mark.parametrize("mode", [{}, HOST_RULE], ids=["device", "host"])
def test_detect_spike_against_running_median(mode):
    guard = guard_with([1.0, 2.0, 3.0, 4.0, 100.0], spike_factor=10, min_history=5, **mode)  # median 3
    assert guard.detect(29.0) == (None, 3.0)
    assert guard.detect(31.0) == ("spike", 3.0)
    assert guard.detect(math.inf)[0] == "non-finite"
    assert guard.detect(math.nan)[0] == "non-finite"


@pytest.mark.parametrize("mode", [{}, HOST_RULE], ids=["device", "host"])
def test_no_spike_before_min_history_but_non_finite_and_max_norm_always(mode):
    guard = guard_with([1.0, 1.0], spike_factor=10, min_history=5, max_norm=1e6, **mode)
    assert guard.detect(1e5) == (None, None)  # 1e5x the median, but no baseline yet
    assert guard.detect(2e6)[0] == "max_norm"
    assert guard.detect(math.nan)[0] == "non-finite"
    assert ExplosionGuard(spike_factor=None, **mode).detect(1e30) == (None, None)


@pytest.mark.parametrize("mode", [{}, HOST_RULE], ids=["device", "host"])
def test_window_is_bounded_and_round_trips_through_state_dict(mode):
    guard = guard_with([float(i) for i in range(1, 200)], window=50, **mode)
    state = guard.state_dict()
    assert state["norms"] == [float(i) for i in range(150, 200)]
    assert all(type(v) in (int, float, str, list, type(None)) for v in state.values())  # plain: weights_only loads it
    clone = ExplosionGuard(window=50, **mode)
    clone.load_state_dict(state)
    assert clone.detect(1745.0) == guard.detect(1745.0) == (None, 174.5)  # median of 150..199, times 10
    assert clone.detect(1746.0) == guard.detect(1746.0) == ("spike", 174.5)


def test_the_host_rule_and_the_device_rule_keep_the_same_state_and_resume_alike():
    """The same norms through a guard deciding on the device and one running its rule on the host: the same actions,
    checkpointed state and next verdicts; and each one's state, loaded into the other kind, goes on as the original."""
    # ... ending on a smooth rise: its recent level (the median of the last 3 calm norms, 4) is what keeps 10 calm
    norms = [1.0, 1.1, math.nan, 0.9, 30.0, 1.2, 0.0, math.inf, 1.0, 45.0, 1.3, 0.8] * 3 + [2.0, 4.0, 8.0]
    kwargs = dict(spike_factor=5.0, window=8, min_history=3, log_spike_score=True, diagnose=False, vanishing=None)
    device, host = ExplosionGuard(policy="warn", snapshot=True, **kwargs), ExplosionGuard(**HOST_RULE, **kwargs)
    for norm in norms:
        assert device.check(None, norm) == host.check(None, norm)
    state = host.state_dict()
    assert state == device.state_dict() and state["events"] == device.events == 12 and len(state["norms"]) == 8
    for original, kind in ((device, HOST_RULE), (host, {"policy": "warn", "snapshot": True})):
        clone = ExplosionGuard(**kind, **kwargs)
        clone.load_state_dict(original.state_dict())
        reason, median = original.detect(10.0)
        assert reason is None and 5 * median < 10.0  # a spike against the window's median, not the recent level
        for norm in (10.0, 1.0, 40.0, math.nan, 2.0):
            first, second = Update(0, None, None, None, {"grad/norm_total": norm}), Update(0, None, None, None, {})
            second.values["grad/norm_total"] = norm
            assert clone.check(None, first) == original.check(None, second) and first.values == second.values


def test_check_without_a_limit_on_skips_reads_the_host_rules_action_from_the_norm():
    """A host-rule guard with ``max_consecutive_skips: null`` decides on the device only ``apply``: ``check`` has no
    device field to read back, and takes the action from the norm, as the device rule's guard does."""
    kwargs = dict(spike_factor=5.0, window=8, min_history=3, max_consecutive_skips=None, diagnose=False, vanishing=None)
    device, host = ExplosionGuard(policy="warn", snapshot=True, **kwargs), ExplosionGuard(**HOST_RULE, **kwargs)
    norms = [1.0, math.nan, 1.1, math.inf, 0.9, 30.0, 1.0] * 2
    actions = [host.check(None, norm) for norm in norms]
    assert actions == [device.check(None, norm) for norm in norms]
    assert [a is Action.SKIP for a in actions] == [not math.isfinite(n) for n in norms]


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

    def decide(self, run, update, overflow_possible=False):
        self.weights.append({k: v.detach().clone() for k, v in run.module.state_dict().items()})
        state = run.optimizer.state_dict()["state"]
        self.opt_states.append({k: {n: t.clone() for n, t in s.items()} for k, s in state.items()})
        return super().decide(run, update, overflow_possible)

    def settle(self, run, update, read):
        action = super().settle(run, update, read)
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
        assert guard.events == 3 and task.core.applied == (3 if applied else 0)
        assert task.trainer.global_step == 3  # every update steps; a withheld one has its effect undone
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
    after = [s for s, _ in series["grad/norm_total"] if s > events[0]["update"]]
    assert len(after) < 50  # the stop is read at the next flush (log_every_n_steps); what ran until then is withheld
    assert series["explosion/events"][-1][1] == 1.0
    closing = [line for line in out.splitlines() if " updates applied" in line][-1]
    assert closing.startswith(f"seqstab: {events[0]['update']} of ")  # none applied from the stop on
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
    code, lines = run_explode(tmp_path, capsys, "--trainer.log_every_n_steps", "1", *extra, "3")
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


def test_a_warn_guard_without_snapshot_finds_on_the_host_what_the_device_finds(tmp_path, monkeypatch):
    """``warn`` without a snapshot runs the event rule at the flush, on the host (``seqstab.core.guard.reports``); with
    a snapshot the device runs it. The same exploding run under both: every scalar (``explosion/events`` and
    ``grad/spike_score`` included), every event's line and the checkpointed guard state are the same, bit for bit."""
    monkeypatch.chdir(tmp_path)
    runs = {}
    for snapshot in ("false", "true"):
        args = ["fit", "--config", str(EXPLODE), *QUIET, "--trainer.max_epochs", "1", "--trainer.logger.save_dir"]
        args += [snapshot, "--data.seq_len", "50", "--data.num_train", "750", "--data.num_val", "50"]
        args += ["--model.guard.snapshot", snapshot, "--model.guard.log_spike_score", "true"]
        args += ["--model.guard.spike_factor", "2", "--model.guard.window", "20"]
        args += ["--trainer.log_every_n_steps", "7"]
        assert main(args) == 0
        run_dir = next(Path(snapshot).glob("seqstab/version_*"))
        lines = [json.loads(line) for line in (run_dir / "explosions.jsonl").read_text().splitlines()]
        for line in lines:  # the snapshot, and the first event's diagnosis measured on its weights, are the device's
            line.pop("snapshot", None), line.pop("diagnosis", None)
        state = torch.load(next(run_dir.glob("checkpoints/*.ckpt")), weights_only=True)["seqstab"]["guard"]
        state = {k: state[k] for k in ("norms", "recent", "spikes", "events", "first_event", "peak", "applied_max")}
        runs[snapshot] = scalars(run_dir), lines, state
    (host, host_lines, host_state), (device, device_lines, device_state) = runs["false"], runs["true"]
    assert host_lines == device_lines and "spike" in {line["reason"] for line in host_lines}
    assert host_state == device_state and host_state["events"] == len(host_lines) and host_state["norms"]
    assert host == device and max(v for _, v in host["grad/spike_score"]) > 0


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
    assert task.guard.events >= 1 and task.core.applied == 2  # 3 updates, the planted one skipped
    assert task.trainer.global_step == 3  # every update steps; a withheld one has its effect undone
    assert all(torch.isfinite(v).all() for v in task.state_dict().values())


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


# -- reset_moments (SPAM): the flagged update skipped, the spiked tensors' optimizer moments zeroed ------------------

SPIKE_AT = 5  # the update at which tensor a's gradient alone jumps 1000x
OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw_amsgrad": lambda params: torch.optim.AdamW(params, lr=0.01, amsgrad=True),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
}
MOMENTS = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw_amsgrad": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "sgd_momentum": ("momentum_buffer",),
}


def state_of(optimizer, params) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params]


def hand_loop(policy, make_optimizer, run_dir=None, updates=7, swap_guard_at=None):
    """Three tensors a (2,), b (3,), c (1,) trained through the update core with gradients set by hand: healthy ones,
    then at ``SPIKE_AT`` a's gradient alone 1000x. Per update: the gradients, the weights and the optimizer state
    before and after. ``swap_guard_at``: there, the guard is replaced by a fresh one loaded from its saved state."""
    torch.manual_seed(0)
    model = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(n)) for k, n in (("a", 2), ("b", 3), ("c", 1))})
    params = list(model.parameters())
    optimizer = make_optimizer(params)
    core = UpdateCore(NoClip(), ExplosionGuard(policy=policy, min_history=3, snapshot=False))
    run = StaticRun(model, optimizer=optimizer, run_dir=run_dir)
    gen = torch.Generator().manual_seed(1)
    seen = []
    for i in range(updates):
        if i == swap_guard_at:
            buffer = io.BytesIO()
            torch.save(core.guard.state_dict(), buffer)
            buffer.seek(0)
            core.guard = ExplosionGuard(policy=policy, min_history=3, snapshot=False)
            core.guard.load_state_dict(torch.load(buffer, weights_only=True))
        grads = [torch.randn(p.shape, generator=gen) * 0.1 for p in params]
        if i == SPIKE_AT:
            grads[0] = grads[0] * 1000

        def backward(loss, grads=grads):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()

        weights, opt = [p.detach().clone() for p in params], state_of(optimizer, params)
        update = core.update(run, params, torch.zeros(()), backward=backward, step=optimizer.step)
        core.flush(run)  # read back now: the verdict of this update, to look at
        seen.append((update, grads, weights, opt, [p.detach().clone() for p in params], state_of(optimizer, params)))
    return seen, optimizer


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_reset_moments_skips_the_spike_and_zeroes_exactly_the_spiked_tensors_moments(name, tmp_path):
    seen, _ = hand_loop("reset_moments", OPTIMIZERS[name], run_dir=tmp_path)
    control, _ = hand_loop("skip", OPTIMIZERS[name])
    assert [u.action for u, *_ in seen] == [Action.STEP] * SPIKE_AT + [Action.SKIP, Action.STEP]
    update, _, weights, opt, weights_after, opt_after = seen[SPIKE_AT]
    assert all(same(w, v) for w, v in zip(weights, weights_after, strict=True))  # the spike was not applied
    a, *others = range(3)
    for key in MOMENTS[name]:  # a's moments zeroed (they were not before) ...
        assert opt[a][key].abs().sum() > 0 and torch.equal(opt_after[a][key], torch.zeros_like(opt[a][key]))
    if "step" in opt[a]:  # ... and its step count set back, so Adam's bias correction treats it as new
        assert float(opt[a]["step"]) == SPIKE_AT and float(opt_after[a]["step"]) == 0
    for i in others:  # b's and c's state bit for bit as it was
        assert opt[i].keys() == opt_after[i].keys() and all(same(opt[i][k], opt_after[i][k]) for k in opt[i])
    event = json.loads((tmp_path / "explosions.jsonl").read_text())
    assert (event["update"], event["reason"], event["action"]) == (SPIKE_AT, "spike", "skip")
    assert event["spiked"] == event["reset"] == ["a"] and event["module"] == "a"

    # the next update: a steps like a freshly created optimizer's first step on it; b and c as under plain skip
    _, grads, weights, *_ = seen[SPIKE_AT + 1]
    fresh = torch.nn.Parameter(weights[a].clone())
    fresh.grad = grads[a].clone()
    OPTIMIZERS[name]([fresh]).step()
    after = seen[SPIKE_AT + 1][4]
    assert same(after[a], fresh.detach())
    assert not same(after[a], control[SPIKE_AT + 1][4][a])  # the reset made a difference to a ...
    for i in others:  # ... and none to b and c
        assert same(after[i], control[SPIKE_AT + 1][4][i]) and all(
            same(seen[SPIKE_AT + 1][5][i][k], control[SPIKE_AT + 1][5][i][k]) for k in opt[i]
        )


def test_reset_moments_under_plain_sgd_has_nothing_to_reset_and_says_so(tmp_path, capsys):
    seen, optimizer = hand_loop("reset_moments", lambda params: torch.optim.SGD(params, lr=0.01), run_dir=tmp_path)
    assert seen[SPIKE_AT][0].action is Action.SKIP and not any(optimizer.state.values())
    event = json.loads((tmp_path / "explosions.jsonl").read_text())
    assert event["spiked"] == ["a"] and event["reset"] == []
    assert "not applied; moments reset for no tensor (the optimizer keeps none)" in capsys.readouterr().out


def test_reset_moments_without_a_per_tensor_baseline_resets_the_non_finite_or_the_largest():
    torch.manual_seed(0)
    model = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(n)) for k, n in (("a", 2), ("b", 3))})
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01)
    guard = ExplosionGuard(policy="reset_moments", max_norm=50.0, snapshot=False)
    core = UpdateCore(NoClip(), guard)
    run = StaticRun(model, optimizer=optimizer)
    for grads, spiked in (
        ([[1.0, 1.0], [1.0, 1.0, 1.0]], None),
        ([[1.0, 1.0], [100.0, 0.0, 0.0]], "b"),  # above max_norm, no history yet: the largest tensor
        ([[math.inf, 1.0], [1.0, 1.0, 1.0]], "a"),  # non-finite: that tensor
    ):
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g)
        exp_avg = [optimizer.state[p]["exp_avg"].clone() for p in params] if optimizer.state else None
        update = core.update(run, params, torch.zeros(()), step=optimizer.step)
        core.flush(run)
        if spiked is None:
            assert update.action is Action.STEP
            continue
        assert update.action is Action.SKIP
        for (name, p), before in zip(model.named_parameters(), exp_avg, strict=True):
            now = optimizer.state[p]["exp_avg"]
            assert torch.equal(now, torch.zeros_like(now)) if name == spiked else torch.equal(now, before)


def test_reset_moments_guard_state_round_trips_bitwise(tmp_path):
    """The per-tensor windows travel in the guard's state (plain lists: a weights_only load): a guard swapped for one
    loaded from it mid-run picks the same tensors, and the run ends with the same bits."""
    whole, _ = hand_loop("reset_moments", OPTIMIZERS["adam"], run_dir=tmp_path / "whole")
    swapped, _ = hand_loop("reset_moments", OPTIMIZERS["adam"], run_dir=tmp_path / "swapped", swap_guard_at=4)
    assert (tmp_path / "whole" / "explosions.jsonl").read_text() == (
        tmp_path / "swapped" / "explosions.jsonl"
    ).read_text()
    assert all(same(a, b) for a, b in zip(whole[-1][4], swapped[-1][4], strict=True))
    guard = ExplosionGuard(policy="reset_moments")
    guard.load_state_dict({"tensor_norms": [[1.0, 2.0]] * 80})
    assert len(guard.state_dict()["tensor_norms"]) == 50  # bounded by the window


def test_reset_moments_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra = ["--model.guard.policy", "reset_moments", "--optimizer.momentum", "0.9", "--model.guard.snapshot", "false"]
    code, lines = run_explode(tmp_path, capsys, *extra, "--model.guard.log_spike_score", "true")
    summary = [line for line in lines if "explosion guard" in line]
    assert code == 0 and "not applied; moments reset for net.layers.0.weight_ih_l0, net" in summary[0]
    run_dir = tmp_path / "runs" / "seqstab" / "version_0"
    events = [json.loads(line) for line in (run_dir / "explosions.jsonl").read_text().splitlines()]
    assert events and all(e["action"] == "skip" and e["reset"] and set(e["reset"]) <= set(e["spiked"]) for e in events)
    score = dict(scalars(run_dir)["grad/spike_score"])
    assert score[events[0]["update"]] > 0 and len(score) == len(scalars(run_dir)["grad/norm_total"])


def test_unknown_guard_policy_from_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(EXPLODE), *QUIET, "--model.guard.policy", "reset"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("seqstab.train: error:") and "reset_moments" in errors[0]
    assert "'reset'" in str(pytest.raises(ConfigError, ExplosionGuard, policy="reset").value)


# -- grad/spike_score ------------------------------------------------------------------------------------------------


def test_spike_score_is_the_fraction_of_spikes_in_the_last_window_updates():
    settings = {"window": 4, "min_history": 2, "max_norm": 20.0, "snapshot": False, "log_spike_score": True}
    guard = ExplosionGuard(spike_factor=10, **settings)
    clip = NoClip().clip([])
    norms = [1.0, 1.0, 50.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0]
    # 50: a spike (> 10 × median 1) though max_norm flags it first; inf: a spike; the first two have no median yet
    want = [0, 0, 1 / 3, 1 / 4, 2 / 4, 2 / 4, 1 / 4, 1 / 4, 0]
    got = []
    for i, norm in enumerate(norms):
        update = Update(i, {}, None, clip, {"grad/norm_total": norm})
        guard.check(None, update)
        got.append(update.values["grad/spike_score"])
        if i == 4:  # the score resumes from the guard's state
            state = guard.state_dict()
            guard = ExplosionGuard(**settings)
            guard.load_state_dict(state)
    assert got == want
    overflow = Update(9, {}, None, clip, {"grad/norm_total": math.inf, "amp/overflow": 1.0})
    guard.check(None, overflow)  # an AMP overflow: the GradScaler's, not counted
    assert overflow.values["grad/spike_score"] == 0.0 and len(guard.state_dict()["spikes"]) == 4
    quiet = Update(0, {}, None, clip, {"grad/norm_total": 1.0})
    ExplosionGuard().check(None, quiet)
    assert "grad/spike_score" not in quiet.values  # off by default: existing runs log the tags they did
