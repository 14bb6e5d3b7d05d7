"""``python -m seqstab.train`` as a user runs it: the default experiment, overrides, bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from seqstab.cli.train import main
from tests.helpers import asked_for, scalars, start_cli, until_teardown

TINY = ["--data.num_train", "100", "--data.num_val", "50", "--trainer.max_epochs", "1"]
QUIET = ["--trainer.enable_progress_bar", "false"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the other core runs the commands started below


def test_validate_and_test_print_their_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # in-process, as the other CLI tests here: the output is what a user's shell shows
    assert main(["fit", *TINY, *QUIET]) == 0
    ckpt = tmp_path / "runs" / "seqstab" / "version_0" / "checkpoints" / "last.ckpt"
    for subcommand, split in (("validate", "val"), ("test", "test")):
        capsys.readouterr()
        assert main([subcommand, "--data.num_test", "50", *QUIET, "--ckpt_path", str(ckpt)]) == 0
        stdout = capsys.readouterr().out
        printed = dict(line.split() for line in stdout.splitlines() if line.startswith(f"{split}/"))
        logged = scalars(tmp_path / "runs" / "seqstab" / "version_0" / "eval")  # beside the run it evaluated
        assert set(printed) == {f"{split}/loss"} | {tag for tag in logged if tag.startswith(f"{split}/")}
        assert float(printed[f"{split}/loss"]) == pytest.approx(logged[f"{split}/loss"][0][1], rel=1e-5)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model.bogus", "3"], "Option 'bogus' is not accepted"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--model.tbptt_steps", "0"], "tbptt_steps=0"),
        (["--model.net.hidden_size", "-1"], "hidden_size=-1"),
        (["--model.net.nonlinearity", "sigmoid"], "model.net.nonlinearity"),
        (["--model", "seqstab.tasks.Nope"], "seqstab.tasks.Nope"),
    ],
)
def test_bad_input_is_one_line_no_traceback_no_run_dir(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args, *QUIET]) == 2  # in-process: the same entry point as `python -m seqstab.train`
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("seqstab.train: error:")]
    assert len(errors) == 1 and needle in errors[0], stderr
    assert not (tmp_path / "runs").exists()


def test_optimizer_and_scheduler_come_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *TINY[:4], "--trainer.max_epochs", "3", *QUIET]
    args += ["--optimizer", "SGD", "--optimizer.lr", "0.5", "--optimizer.weight_decay", "0.01"]
    args += ["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"]
    assert main(args) == 0
    lr = [value for _, value in scalars(tmp_path / "runs" / "seqstab" / "version_0")["train/lr"]]
    assert lr == [0.5, 0.5, 0.25, 0.25, 0.125, 0.125]  # two updates per epoch, halved once per epoch


def test_train_lr_is_the_rate_the_update_was_applied_with(tmp_path, monkeypatch):
    """A per-update scheduler halves the rate after every update: update 0 ran at the initial rate, update 1 at half."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", *TINY[:4], "--trainer.max_steps", "4", *QUIET, "--model.scheduler_interval", "step"]
    args += ["--optimizer", "SGD", "--optimizer.lr", "0.5"]
    args += ["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"]
    assert main(args) == 0
    lr = scalars(tmp_path / "runs" / "seqstab" / "version_0")["train/lr"]
    assert lr == [(0, 0.5), (1, 0.25), (2, 0.125), (3, 0.0625)]


def test_plateau_scheduler_steps_on_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *TINY[:4], "--trainer.max_epochs", "4", *QUIET, "--optimizer", "SGD"]
    args += [
        "--lr_scheduler",
        "ReduceLROnPlateau",
        "--lr_scheduler.monitor",
        "val/loss",
        "--lr_scheduler.patience",
        "0",
    ]
    args += ["--optimizer.lr", "1e-4", "--lr_scheduler.factor", "0.5", "--lr_scheduler.threshold", "0.5"]
    assert main(args) == 0
    lr = [value for _, value in scalars(tmp_path / "runs" / "seqstab" / "version_0")["train/lr"]]
    # patience 0 and never a 50% gain: validation 1 sets the best, validations 2 and 3 halve the lr
    assert lr[0] == pytest.approx(1e-4) and lr[-1] == pytest.approx(2.5e-5)


def test_default_root_dir_moves_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY[:4], "--trainer.max_steps", "1", *QUIET, "--trainer.default_root_dir", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "runs" / "seqstab" / "version_0" / "config.yaml").is_file()
    assert not (tmp_path / "runs").exists()


def test_a_config_file_of_trainer_settings_runs_the_default_experiment(tmp_path, monkeypatch):
    """A config naming neither model nor data (here, only a logger) runs the embedded default experiment with those
    settings, as the same keys on the command line do."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "csv.yaml").write_text(
        "trainer:\n  max_steps: 2\n  logger:\n"
        "    - class_path: pytorch_lightning.loggers.CSVLogger\n      init_args: {save_dir: logs, name: csv}\n"
    )
    assert main(["fit", "-c", "csv.yaml", *TINY[:4], *QUIET]) == 0
    run_dir = tmp_path / "logs" / "csv" / "version_0"
    with open(run_dir / "metrics.csv") as f:
        assert len([row for row in csv.DictReader(f) if row.get("train/loss")]) == 2
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["class_path"] == "seqstab.tasks.SequenceRegressor"  # the embedded default's
    assert config["trainer"]["max_steps"] == 2 and not (tmp_path / "runs").exists()


def test_a_setting_beside_ckpt_path_that_differs_from_the_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    """``fit --ckpt_path FILE --optimizer.lr 0.1`` would train at the checkpoint's lr while config.yaml says 0.1:
    refused, naming the key and both values, from the run's config.yaml or, for a copied file, from what the
    checkpoint holds. trainer settings may change, and config.yaml records what the resumed run used."""
    monkeypatch.chdir(tmp_path)
    base = ["fit", *TINY[:4], *QUIET, "--optimizer", "Adam", "--optimizer.lr", "0.01", "--lr_scheduler", "StepLR"]
    base += ["--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"]
    assert main([*base, "--trainer.max_steps", "2"]) == 0  # one epoch: the scheduler halved the lr once
    ckpt = Path("runs/seqstab/version_0/checkpoints/last.ckpt")
    shutil.copy(ckpt, tmp_path / "copy.ckpt")  # no config.yaml beside it
    capsys.readouterr()
    changed = {
        ("--optimizer.lr", "0.1", str(ckpt)): "optimizer.lr is 0.01 in the checkpoint (its run's "
        "runs/seqstab/version_0/config.yaml) but 0.1 here",
        ("--optimizer.lr", "0.1", "copy.ckpt"): "optimizer.lr is 0.01 in the checkpoint (the checkpoint's saved "
        "state) but 0.1 here",
        ("--lr_scheduler.step_size", "3", "copy.ckpt"): "lr_scheduler.step_size is 1 in the checkpoint",
        ("--model.net.hidden_size", "32", "copy.ckpt"): "model.net.hidden_size is 64 in the checkpoint",
    }
    for (key, value, path), needle in changed.items():
        assert main([*base, key, value, "--trainer.max_steps", "4", "--ckpt_path", path]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"seqstab.train: error: --ckpt_path {path}: {needle}"), line
        assert line.endswith("drop it to resume, or start a new run without --ckpt_path")
    assert not Path("runs/seqstab/version_1").exists()
    for path in (str(ckpt), "copy.ckpt"):  # the same experiment, more steps: resumed
        assert main([*base, "--trainer.max_steps", "4", "--ckpt_path", path]) == 0
    config = yaml.safe_load(Path("runs/seqstab/version_1/config.yaml").read_text())
    assert config["optimizer"]["init_args"]["lr"] == 0.01 and config["trainer"]["max_steps"] == 4
    resumed = torch.load("runs/seqstab/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0025


@pytest.mark.parametrize(
    "algorithm,policy,argument", [(None, "NormClip", "max_norm"), ("value", "ValueClip", "clip_value")]
)
def test_gradient_clip_val_runs_as_the_models_clipping(tmp_path, monkeypatch, capsys, algorithm, policy, argument):
    """Lightning's clipping settings (refused by Lightning under manual optimization, in a traceback) become the
    model's clipping policy, said in one line; config.yaml records the policy the run used."""
    monkeypatch.chdir(tmp_path)
    clip = ["--trainer.gradient_clip_val", "0.5"]
    clip += ["--trainer.gradient_clip_algorithm", algorithm] if algorithm else []
    assert main(["fit", *TINY[:4], *QUIET, "--trainer.max_steps", "2", *clip]) == 0
    said = f"(algorithm {algorithm or 'norm'!r}) runs as model.clipping seqstab.clipping.{policy}({argument}=0.5)"
    assert f"seqstab: trainer.gradient_clip_val=0.5 {said}" in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "seqstab" / "version_0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    clipping = {"class_path": f"seqstab.clipping.{policy}", "init_args": {argument: 0.5}}
    assert config["model"]["init_args"]["clipping"] == clipping and config["trainer"]["gradient_clip_val"] is None
    logged = {tag: [value for _, value in series] for tag, series in scalars(run_dir).items()}
    assert logged["grad/clipped"] == [1.0, 1.0]  # the default experiment's norms (1e3 to 1e6) are clipped
    if policy == "NormClip":
        assert logged["grad/clip_threshold"] == [0.5, 0.5] and logged["grad/norm_total_clipped"] == [0.5, 0.5]
    else:  # every element clamped to 0.5: the norm is at most 0.5 * sqrt(number of parameters)
        assert all(0 < value <= 0.5 * 4418**0.5 for value in logged["grad/norm_total_clipped"])


# -- as a user runs it: ``python -m seqstab.train`` in a process of its own -------------------------------------------

BAD_YAML = (
    "model:\n  class_path: seqstab.tasks.SequenceRegressor\n  init_args:\n    hidden_sise: 8\n"
    "data:\n  class_path: datamodules.synthetic.AddingProblem\n"
)


@pytest.fixture(scope="module", autouse=True)
def started(request, tmp_path_factory):
    """The commands of the tests below, all started when this module starts: each spends seconds importing, on one
    core, while the in-process tests above run on the other. Each in a folder of its own."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    cwd = {name: tmp_path_factory.mktemp(name) for name in ("default", "bare", "dotted", "bad_yaml", "warnings")}
    (cwd["bad_yaml"] / "bad.yaml").write_text(BAD_YAML)
    runs = {
        "default": start_cli("fit", *TINY, cwd=cwd["default"]),
        "bare": start_cli("fit", "--print_config", cwd=cwd["bare"]),
        "dotted": start_cli("fit", "--model.net.hidden_size", "7", "--print_config", cwd=cwd["dotted"]),
        "bad_yaml": start_cli("fit", "--config", "bad.yaml", *QUIET, cwd=cwd["bad_yaml"]),
        "warnings": start_cli(
            "fit", *TINY[:4], "--trainer.max_steps", "2", *QUIET, cwd=cwd["warnings"], PYTHONWARNINGS="default"
        ),
    }
    yield from until_teardown(runs)


def test_default_experiment_writes_tensorboard_events(started):
    result, cwd = started["default"].result(), started["default"].cwd
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = cwd / "runs" / "seqstab" / "version_0"
    assert f"tensorboard --logdir {run_dir.relative_to(cwd)}" in result.stdout
    series = scalars(run_dir)
    steps = [step for step, _ in series["train/loss"]]
    assert steps == list(range(2))  # 100 sequences / batch 50: one logging step per update
    for tag in ("grad/norm_total", "grad/norm_total_clipped", "grad/clipped", "grad/clip_threshold", "train/lr"):
        assert len(series[tag]) == 2, tag
    assert "val/loss" in series
    assert (run_dir / "config.yaml").is_file()


def test_no_arguments_runs_the_embedded_default(started):
    """``python -m seqstab.train`` alone means ``fit`` on seqstab/default.yaml (checked without training)."""
    from seqstab.cli import train

    assert train.with_default([]) == ["fit", "--config", str(train.DEFAULT_CONFIG)]
    assert train.with_default(["fit", "--trainer.max_epochs", "1"])[1:3] == ["--config", str(train.DEFAULT_CONFIG)]
    assert train.with_default(["fit", "-c", "x.yaml"]) == ["fit", "-c", "x.yaml"]
    result = started["bare"].result()
    assert result.returncode == 0
    assert "seqstab.tasks.SequenceRegressor" in result.stdout and "AddingProblem" in result.stdout


def test_dotted_override_reaches_the_model(started):
    result = started["dotted"].result()
    assert result.returncode == 0
    assert "hidden_size: 7" in result.stdout


def test_unknown_config_key_in_yaml(started):
    result, cwd = started["bad_yaml"].result(), started["bad_yaml"].cwd
    assert result.returncode == 2 and "hidden_sise" in result.stderr and "Traceback" not in result.stderr
    assert not (cwd / "runs").exists()


def test_warnings_print_as_seqstab_warning_lines(started):
    """The default experiment's clip-threshold warning, as a user's shell shows it: one line, no source path."""
    result = started["warnings"].result()
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "clip threshold" in line]
    assert line.startswith("seqstab: warning: clip threshold 1 is ") and "below the first gradient norm" in line
    assert "UserWarning" not in result.stderr and ".py:" not in result.stderr
