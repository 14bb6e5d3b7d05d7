"""A CSV series through ``python -m seqstab.train`` (its entry point, in-process): values that overflow float32, a
file larger than the memory its parse takes, and a resume on a file that changed since the checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

import datamodules.files
from datamodules.files import size_text
from datamodules.timeseries import CSVSeries
from seqstab.cli.train import main
from seqstab.core.errors import DataError
from seqstab.core.io import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SERIES = ["--model", "seqstab.tasks.Forecaster", "--model.net.hidden_size", "8"]
SERIES += ["--data", "datamodules.timeseries.CSVSeries", "--data.path", "series.csv", "--data.target", "load"]
SERIES += ["--data.input_length", "4", "--data.batch_size", "4"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_series(path, values) -> None:
    """``date,load`` rows, one an hour from 2020-01-01; row ``i`` is on line ``i + 2``."""
    rows = [f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00,{v}" for i, v in enumerate(values)]
    path.write_text("date,load\n" + "\n".join(rows) + "\n")


def run_fails(args: list[str], capsys, where) -> str:
    """Exit 2, one error line, no traceback, no run directory; the line."""
    code = main(["fit", *args, *QUIET, "--trainer.max_steps", "2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert not (where / "runs").exists(), "a refused start left a run directory behind"
    return lines[0]


def ramp(n: int) -> list[str]:
    return [f"{(i * 7) % 13}.5" for i in range(n)]


# -- values finite in float64 that are not in float32, before or after normalisation ------------------------------


@pytest.mark.parametrize(
    "planted,needle",
    [
        ({10: "1e39"}, "series.csv line 12: column 'load' value 1e+39 is not finite in float32"),
        (  # finite in float64, and in float32 each is inf: their mean overflows first
            {3: "1e308", 7: "1e308"},
            "series.csv line 5: column 'load' value 1e+308 makes the train split's mean overflow (inf",
        ),
        (  # every value fits float32; the train split barely varies, so row 50 normalised is ~1e39
            {**{i: "0" if i % 2 else "1e-30" for i in range(42)}, 50: "1e9"},
            "series.csv line 52: column 'load' value 1e+09 is 2e+39 standard deviations from the train split's mean",
        ),
    ],
)
def test_a_value_that_overflows_float32_is_refused_naming_file_line_and_column(here, capsys, planted, needle):
    values = ramp(60)
    for row, text in planted.items():
        values[row] = text
    write_series(here / "series.csv", values)
    line = run_fails(SERIES, capsys, here)
    assert needle in line, line


# -- a file larger than the memory its parse takes: refused before it is read -------------------------------------


def test_a_csv_larger_than_free_memory_is_refused_before_reading(here, capsys):
    path = here / "series.csv"
    write_series(path, ramp(4000))  # real rows for the estimate to measure, then a hole
    with open(path, "r+b") as f:
        f.truncate(1 << 40)  # 1 TiB, sparse: nothing written
    line = run_fails(SERIES, capsys, here)
    assert "series.csv: 1.0 TiB on disk; parsing it takes about" in line and "of memory and" in line, line
    assert "is free" in line


def test_the_free_memory_decides(tmp_path, monkeypatch):
    path = tmp_path / "s.csv"
    write_series(path, ramp(200))
    monkeypatch.setattr(datamodules.files, "available_memory", lambda: 1024)
    with pytest.raises(DataError) as err:
        _ = CSVSeries(target="load", path=str(path), input_length=4).spec
    message = str(err.value)
    assert message.startswith(f"{path}: {size_text(path.stat().st_size)} on disk; parsing it takes about")
    assert message.endswith("of memory and 1.0 KiB is free: give a smaller file (or free memory)")
    monkeypatch.setattr(datamodules.files, "available_memory", lambda: None)  # unknown: no check
    assert CSVSeries(target="load", path=str(path), input_length=4).spec.input_size == 1


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"load\n" + b"1" * (2 << 20) + b"\n", "s.csv line 2: longer than 1,048,576 characters; is it a text file?"),
        (b'load\n1\n"' + b"2" * 200_000 + b'"\n', "s.csv line 3: not a CSV row (field larger than field limit"),
        (b"load\n1\n" + bytes(range(128, 256)), "s.csv line 3: invalid UTF-8 (byte 0x80 at offset 7)"),
    ],
)
def test_a_file_that_is_not_a_csv_is_one_line(tmp_path, content, needle):
    path = tmp_path / "s.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        _ = CSVSeries(target="load", path=str(path)).spec
    assert needle in str(err.value) and "\n" not in str(err.value)


# -- the split and the normalisation are pinned across a resume ----------------------------------------------------


def test_a_resume_on_a_csv_with_rows_appended_is_refused(here, capsys):
    write_series(here / "series.csv", ramp(120))
    fit = ["fit", *SERIES, *QUIET, "--trainer.limit_val_batches", "1"]
    assert main([*fit, "--trainer.max_steps", "2"]) == 0, capsys.readouterr().err[-2000:]
    assert main([*fit, "--trainer.max_steps", "3", "--ckpt_path", "last"]) == 0  # the same file resumes
    capsys.readouterr()

    with open(here / "series.csv", "a") as f:  # 12 more hours: the fractional split moves
        f.write("".join(f"2020-01-06 {h:02d}:00,{h}.5\n" for h in range(12)))
    runs = sorted((here / "runs" / "seqstab").iterdir())
    code = main([*fit, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert (
        "series.csv: the checkpoint's split (val from row 84, test from row 96, end 120) is not this data's "
        "(val from row 92, test from row 106, end 132): it has 132 rows, it had 120" in lines[0]
    ), lines[0]
    assert sorted((here / "runs" / "seqstab").iterdir()) == runs  # the refused resume left no run behind


def _origin(path, **kwargs) -> dict:
    dm = CSVSeries(target="load", path=str(path), input_length=4, **kwargs)
    return dm.state_dict()


def test_edited_values_or_another_normalisation_are_refused_and_unused_rows_are_not(tmp_path):
    path = tmp_path / "s.csv"
    write_series(path, ramp(120))
    saved = _origin(path)
    saved = torch.load(_save(tmp_path, saved), weights_only=True)  # what a checkpoint gives back
    CSVSeries(target="load", path=str(path), input_length=4).load_state_dict(saved)  # the same file: accepted

    values = ramp(120)
    values[100] = "99"  # a test row edited
    write_series(path, values)
    with pytest.raises(CheckpointError, match=r"s.csv: the test split's rows 96-119 are not those the checkpoint"):
        CSVSeries(target="load", path=str(path), input_length=4).load_state_dict(saved)
    write_series(path, ramp(120))
    with pytest.raises(CheckpointError, match=r"s.csv: the normalisation differs from the checkpoint's \(mean"):
        CSVSeries(target="load", path=str(path), input_length=4, normalize=False).load_state_dict(saved)

    pinned = _origin(path, split_rows=[80, 100, 110])
    write_series(path, ramp(130))  # rows past the split's end: the split and the statistics are the same
    CSVSeries(target="load", path=str(path), input_length=4, split_rows=[80, 100, 110]).load_state_dict(pinned)


def _save(folder, state) -> str:
    path = os.path.join(folder, "state.pt")
    torch.save(state, path)
    return path
