"""The bad-input matrix: every mistake is one line naming what is wrong, exit code 2, no traceback, and no run
directory left behind. Legal but suspicious settings warn once."""

from __future__ import annotations

import os
import warnings

import pytest

from seqstab.cli.train import main

TINY = ["--data.num_train", "40", "--data.num_val", "20", "--data.seq_len", "10", "--data.batch_size", "10"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]


def run_fails(args: list[str], capsys, where, fresh: bool = True) -> str:
    """Run the CLI in-process; assert exit 2, exactly one error line and no traceback (and, when ``fresh``, no
    ``runs`` directory); return the line."""
    code = main(["fit", *args, *QUIET])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert not fresh or not (where / "runs").exists(), "a failed start left a run directory behind"
    return lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model.clipping", "seqstab.clipping.Nope"], "model.clipping: class_path 'seqstab.clipping.Nope'"),
        # wrong types
        (["--model.net.hidden_size", "abc"], "model.net.hidden_size: Expected a <class 'int'>. Got value: abc"),
        (["--model.net.dropout", "lots"], "model.net.dropout: Expected a <class 'float'>"),
        (["--trainer.max_epochs", "two"], "trainer.max_epochs"),
        # zero or negative sizes, lengths, learning rates
        (["--model.net.hidden_size", "0"], "hidden_size=0: must be > 0"),
        (["--model.net.num_layers", "-1"], "num_layers=-1: must be > 0"),
        (["--model.tbptt_steps", "0"], "tbptt_steps=0: must be > 0"),
        (["--data.seq_len", "0"], "seq_len=0: must be > 0"),
        (["--data.batch_size", "-2"], "batch_size=-2: must be > 0"),
        (["--model.clipping.max_norm", "0"], "max_norm=0.0: must be > 0"),
        (["--optimizer", "SGD", "--optimizer.lr", "-1"], "optimizer.lr=-1.0: must be > 0"),
        (["--optimizer", "Adam", "--optimizer.lr", "0"], "optimizer.lr=0.0: must be > 0"),
        (["--optimizer", "SGD", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "0"], "step_size=0"),
        (["--optimizer", "Adam", "--optimizer.eps", "-1"], "optimizer: Invalid epsilon value: -1.0"),
        # accepted by LightningCLI, then dropped: a scheduler without an optimizer (the default config names one)
        (
            ["--optimizer", "null", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"],
            "lr_scheduler is set but optimizer is not",
        ),
    ],
)
def test_bad_value(here, capsys, args, needle):
    assert needle in run_fails([*TINY, *args], capsys, here)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "seqstab.tasks.Nope"], "model: class_path 'seqstab.tasks.Nope': module 'seqstab.tasks' has no"),
        (["--data", "datamodules.synthetic.Nope"], "data: class_path 'datamodules.synthetic.Nope'"),
        (["--model", "nowhere.Model"], "class_path 'nowhere.Model'"),
    ],
)
def test_unknown_class_path(here, capsys, args, needle):
    assert needle in run_fails(args, capsys, here)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "datamodules.example.DelayedEcho"], "fit.model (give --model seqstab.tasks.LanguageModel |"),
        (["--model", "seqstab.tasks.Forecaster"], "fit.data (give --data datamodules.<module>.<DataModule>"),
    ],
)
def test_model_or_data_alone_names_what_is_missing(here, capsys, args, needle):
    assert needle in run_fails(args, capsys, here)


@pytest.mark.parametrize(
    "args,needle",
    [
        ([*TINY, "--trainer.max_epochs", "-5"], "trainer.max_epochs=-5: must be -1 (no limit) or >= 0"),
        ([*TINY, "--data.num_workers", "-1"], "num_workers=-1: must be >= 0"),
        (  # the task does not fit the data: said at start-up, with the task that does
            ["--model", "seqstab.tasks.SequenceClassifier", "--data", "datamodules.synthetic.AddingProblem", *TINY],
            "trains on data of kind 'classification', but the data's spec.kind is 'regression': use --model "
            "seqstab.tasks.SequenceRegressor",
        ),
        (
            ["--model", "seqstab.tasks.LanguageModel", "--data", "datamodules.timeseries.SumOfSines"],
            "use --model seqstab.tasks.Forecaster",
        ),
        ([*TINY, "--model.net.hidden_size", "1000000000"], "1e+18 parameters need"),  # before any allocation
        ([*TINY, "--trainer.logger.init_args.save_dir", "/proc/seqstab-x"], "cannot write there: No such file"),
    ],
)
def test_mistakes_found_at_start_up(here, capsys, args, needle):
    assert needle in run_fails(args, capsys, here)


@pytest.mark.parametrize(
    "args,needle",
    [
        # settings that make a fit do nothing: refused before anything is written
        (["--trainer.max_steps", "0"], "trainer.max_steps=0: fit would train nothing (give -1 for no limit, or a"),
        (["--trainer.max_epochs", "0"], "trainer.max_epochs=0: fit would train nothing"),
        (["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches=0.0: fit would train on no batch"),
        (["--trainer.limit_train_batches", "0.0"], "trainer.limit_train_batches=0.0: fit would train on no batch"),
        # Lightning's settings that seqstab's loop does not take
        (
            ["--trainer.accumulate_grad_batches", "4"],
            "trainer.accumulate_grad_batches=4: not supported: seqstab's chunk loop makes one update per chunk of "
            "one batch; for updates over 4x the sequences use --data.batch_size 40",
        ),
        (
            ["--model.clipping", "NormClip", "--trainer.gradient_clip_val", "1"],
            "trainer.gradient_clip_val=1.0 and model.clipping are both given: seqstab clips in its own update loop "
            "with model.clipping alone (give one: --model.clipping seqstab.clipping.NormClip "
            "--model.clipping.max_norm 1.0 is the same)",
        ),
        (["--trainer.gradient_clip_val", "-1"], "trainer.gradient_clip_val=-1.0: must be a number > 0"),
        (
            ["--trainer.gradient_clip_algorithm", "value"],
            "trainer.gradient_clip_algorithm='value' without trainer.gradient_clip_val: nothing to clip at",
        ),
    ],
)
def test_settings_lightning_would_ignore_or_trip_on(here, capsys, args, needle):
    code = main(["fit", *TINY, *QUIET, *args])  # after QUIET: its max_steps 2 must not win
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert needle in lines[0]
    assert not (here / "runs").exists()


def test_a_config_file_that_is_not_a_mapping(here, capsys):
    (here / "list.yaml").write_text("- trainer:\n    max_steps: 2\n")
    line = run_fails(["--config", "list.yaml"], capsys, here)
    mapping = "a config file must be a mapping of settings (model:, data:, trainer: ...)"
    assert line.endswith(f"list.yaml: {mapping}, this one holds a list")
    (here / "word.yaml").write_text("fit\n")
    assert run_fails(["--config", "word.yaml"], capsys, here).endswith("this one holds a single value ('fit')")


@pytest.mark.parametrize("model", ["LanguageModel", "SequenceRegressor"])
def test_predict_that_would_write_nothing_is_refused(here, capsys, model):
    """predict writes what a prediction writer writes (a Forecaster's predictions.csv); for other tasks it would end
    with exit 0 and an empty predict/ directory."""
    (here / "text.txt").write_text("the cat sat on the mat\n" * 40)
    lm = ["--model", "seqstab.tasks.LanguageModel", "--data", "datamodules.text.TextFiles", "--data.seq_len", "5"]
    for split in ("train", "valid", "test"):
        lm += [f"--data.{split}", "text.txt"]
    code = main(["predict", *(lm if model == "LanguageModel" else TINY), "--trainer.enable_progress_bar", "false"])
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert code == 2 and f"predict: {model} writes no predictions (seqstab.tasks.Forecaster writes" in line
    instead = "seqstab generate --ckpt_path CKPT" if model == "LanguageModel" else "for its metrics use test"
    assert instead in line and not (here / "runs").exists()


def test_duplicate_keys_in_a_config_file(here, capsys):
    (here / "twice.yaml").write_text("trainer:\n  max_steps: 3\n  max_steps: 4\n")
    line = run_fails([*TINY, "--config", "twice.yaml"], capsys, here)
    assert "twice.yaml: key 'max_steps' appears twice in one mapping (line 2 and line 3)" in line
    (here / "blocks.yaml").write_text("model:\n  init_args: {}\ndata: {}\nmodel:\n  class_path: x\n")
    assert "key 'model' appears twice in one mapping (line 1 and line 4)" in run_fails(
        [*TINY, "--config", "blocks.yaml"], capsys, here
    )


def test_a_start_up_that_fails_in_any_way_leaves_no_run_directory(here, capsys, monkeypatch):
    """Not only the recognised mistakes: a bug during start-up (here, a datamodule that raises a plain error in
    setup) removes the run directory the start made, and the error propagates as a bug does."""
    from datamodules.synthetic import AddingProblem

    def broken_setup(self, stage):
        raise RuntimeError("a bug in setup")

    monkeypatch.setattr(AddingProblem, "setup", broken_setup)
    with pytest.raises(RuntimeError, match="a bug in setup"):
        main(["fit", *TINY, *QUIET])
    assert not (here / "runs").exists()


def test_a_full_disk_at_a_checkpoint_save_is_one_line_and_keeps_the_run(here, capsys, monkeypatch):
    """The disk fills up at the first save, after training started: one line naming the file; the run directory
    keeps its event files (nothing half-written under the checkpoint's name)."""
    import errno

    from seqstab.core import io as checkpoint

    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    assert main(["fit", *TINY, *QUIET]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("seqstab.train: error:")]
    assert line.endswith(".ckpt: cannot write the checkpoint: No space left on device")
    run = here / "runs" / "seqstab" / "version_0"
    assert list(run.glob("events.out.tfevents.*")) and not list(run.rglob("*.ckpt")) and not list(run.rglob("*.part"))


def test_yaml_that_does_not_parse(here, capsys):
    (here / "broken.yaml").write_text("model:\n  init_args: [hidden_size: 8\ntrainer: {max_epochs: 1\n")
    line = run_fails(["--config", "broken.yaml"], capsys, here)
    assert "broken.yaml: not valid YAML (line 3, column 8): expected ',' or ']'" in line


def test_log_directory_under_a_file_is_refused_before_training(here, capsys):
    (here / "blocker").write_text("a file, not a directory")
    line = run_fails([*TINY, "--trainer.logger.init_args.save_dir", "blocker/runs"], capsys, here)
    assert f"trainer.logger.save_dir='blocker/runs': cannot write there: {here / 'blocker'} is not a directory" in line
    assert (here / "blocker").read_text() == "a file, not a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_log_directory_is_refused_before_training(here, capsys):
    (here / "ro").mkdir(mode=0o500)
    line = run_fails([*TINY, "--trainer.logger.init_args.save_dir", "ro/runs"], capsys, here)
    assert "cannot write there: permission denied" in line


def write_series(path, bad_row: int | None) -> None:
    rows = ["date,load"] + [f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00,{(i * 7) % 13}.5" for i in range(120)]
    if bad_row is not None:
        rows[bad_row] = rows[bad_row].split(",")[0] + ",nan"
    path.write_text("\n".join(rows) + "\n")


SERIES = ["--model", "seqstab.tasks.Forecaster", "--model.net.hidden_size", "8"]
SERIES += ["--data", "datamodules.timeseries.CSVSeries"]
SERIES += ["--data.target", "load", "--data.path", "series.csv", "--data.input_length", "8", "--data.batch_size", "4"]


def test_nan_in_a_data_file_names_file_and_line(here, capsys):
    write_series(here / "series.csv", bad_row=57)
    line = run_fails(SERIES, capsys, here)
    assert "series.csv line 58: column 'load' is missing a value ('nan')" in line


def test_nan_covered_by_the_missing_value_policy_trains(here, capsys):
    write_series(here / "series.csv", bad_row=57)
    assert main(["fit", *SERIES, "--data.missing", "ffill", *QUIET]) == 0, capsys.readouterr().err[-2000:]


def test_checkpoint_from_a_different_model_shape(here, capsys):
    """Resuming (fit) names the setting that differs from the checkpoint's run; evaluating (test) a checkpoint with a
    model of another shape names the parameter."""
    assert main(["fit", *TINY, "--model.net.hidden_size", "8", *QUIET]) == 0
    (saved,) = (here / "runs").rglob("last.ckpt")
    before = sorted((here / "runs" / "seqstab").iterdir())
    line = run_fails([*TINY, "--model.net.hidden_size", "16", "--ckpt_path", str(saved)], capsys, here, fresh=False)
    assert f"--ckpt_path {saved}: model.net.hidden_size is 8 in the checkpoint" in line and "but 16 here" in line
    assert sorted((here / "runs" / "seqstab").iterdir()) == before  # the failed resume left no run behind
    code = main(["test", *TINY, "--model.net.hidden_size", "16", "--ckpt_path", str(saved), *QUIET[:2]])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"{saved}: made for another model shape: net.layers.0.weight_ih_l0 is (8, 2) in the checkpoint" in lines[0]
    assert "(16, 2) in this model (it was made with net.hidden_size=8)" in lines[0]
    assert sorted((here / "runs" / "seqstab").iterdir()) == before


# -- legal but suspicious: one warning ---------------------------------------------------------------------------


def caught_warnings(args: list[str]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so a warning repeated per update would be seen repeated
        assert main(["fit", *args, *QUIET, "--trainer.max_steps", "4"]) == 0
    return [str(w.message) for w in caught]


def test_suspicious_settings_warn_once(here):
    """Truncation longer than the sequence; a clip threshold far below the first gradient norm."""
    messages = caught_warnings([*TINY, "--model.tbptt_steps", "50", "--model.clipping.max_norm", "0.001"])
    truncation = [m for m in messages if "tbptt_steps=50 is longer than a batch (10 steps)" in m]
    threshold = [m for m in messages if "clip threshold 0.001 is" in m and "below the first gradient norm" in m]
    assert len(truncation) == 1 and len(threshold) == 1, messages


def test_sensible_settings_do_not_warn(here):
    write_series(here / "series.csv", bad_row=None)
    messages = caught_warnings([*SERIES, "--model.tbptt_steps", "4", "--model.clipping", "NormClip"])
    assert not [m for m in messages if "tbptt_steps" in m or "clip threshold" in m], messages
