"""What a run produces, as a user finds it: forecasts in a file, evaluations beside the run they evaluate, the
end-of-fit summary, every logger getting the same series, and the ``seqstab`` console command."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from seqstab.cli import command as cli
from seqstab.cli.train import DEFAULT_CONFIG, main
from seqstab.core.logs import record
from tests.data_paths import SHARED_DATA
from tests.helpers import asked_for, scalars, start_cli, until_teardown

ETTH1 = SHARED_DATA / "timeseries" / "ETTh1.csv"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "timeseries" / "etth1_lstm.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _etth1_cut(path: Path, rows: int = 800) -> Path:
    with open(ETTH1) as f:
        path.write_text("".join(line for _, line in zip(range(rows + 1), f, strict=False)))
    return path


def _etth1(csv_path: Path) -> list[str]:
    """The shipped ETTh1 config on a cut of the file, small enough for a test."""
    return ["-c", str(CONFIG), "--data.path", str(csv_path), "--data.url", "null", "--data.sha256", "null",
            "--model.net.hidden_size", "8", *QUIET]  # fmt: skip


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    """One ETTh1 forecaster trained for two epochs (in-process: the same entry point as the command)."""
    root = tmp_path_factory.mktemp("etth1")
    cwd, out = os.getcwd(), io.StringIO()
    os.chdir(root)
    try:
        args = _etth1(_etth1_cut(root / "etth1.csv"))
        with contextlib.redirect_stdout(out):
            assert main(["fit", *args, "--trainer.max_epochs", "2"]) == 0
    finally:
        os.chdir(cwd)
    return root, args, out.getvalue()


def test_fit_ends_naming_its_best_checkpoint_and_the_last_validation_in_original_units(forecaster):
    root, _, out = forecaster
    best = next(line for line in out.splitlines() if line.startswith("best checkpoint (val/mae "))
    path = Path(best.rsplit(": ", 1)[1])
    assert (root / path).is_file() and path.parent.parent.parent == Path("runs/seqstab")
    summary = {}
    for line in out[out.index("last validation:") :].splitlines()[1:]:
        if not line.strip().startswith("val/"):
            break
        name, value = line.split()[:2]
        summary[name] = float(value)
    assert {"val/loss", "val/mae", "val/rmse"} <= summary.keys()  # every metric, those in original units included
    assert float(best.split()[3].rstrip("):")) == pytest.approx(summary["val/mae"], rel=1e-5)


def test_predict_writes_forecasts_whose_mae_is_test_mae(forecaster, capsys, monkeypatch):
    root, args, _ = forecaster
    monkeypatch.chdir(root)
    run = root / "runs" / "seqstab" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    versions = sorted((root / "runs" / "seqstab").iterdir())
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(ckpt)]) == 0
    test_mae = float(
        next(line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("test/mae"))
    )
    assert main(["predict", *args, "--ckpt_path", str(ckpt)]) == 0
    out = capsys.readouterr().out
    path = run / "predict" / "predictions.csv"
    assert f"written to {path}" in out
    rows = list(csv.DictReader(path.open()))
    header = list(rows[0])
    assert header[:3] == ["origin", "row", "OT_t+1"] and header[26] == "OT_t+1_observed" and len(header) == 2 + 48
    # every origin the test split is scored on, then the window that ends at the last row: a forecast into the future
    assert rows[-1]["origin"] == "2016-08-03 07:00:00" and rows[-1]["row"] == "799"  # the 801st line of the file
    assert rows[-1]["OT_t+1_observed"] == "" and rows[-1]["OT_t+1"] != ""
    complete = [r for r in rows if all(r[f"OT_t+{h}_observed"] for h in range(1, 25))]
    errors = [
        sum(abs(float(r[f"OT_t+{h}"]) - float(r[f"OT_t+{h}_observed"])) for h in range(1, 25)) / 24 for r in complete
    ]
    assert sum(errors) / len(errors) == pytest.approx(test_mae, rel=1e-5)
    first = int(complete[0]["row"])
    with open(root / "etth1.csv") as f:  # observed values in original units: the CSV's own OT column
        ot = [line.rstrip().split(",")[-1] for line in f][1:]
    assert float(complete[0]["OT_t+1_observed"]) == pytest.approx(float(ot[first + 1]), rel=1e-6)
    # test and predict wrote beside the run they evaluated: no new version directory
    assert sorted((root / "runs" / "seqstab").iterdir()) == versions
    assert (run / "eval" / "config.yaml").is_file() and "test/mae" in scalars(run / "eval")


def test_predict_on_a_stream_forecaster_labels_rows_by_index(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = ["--data", "datamodules.timeseries.SumOfSines", "--data.length", "400", "--data.mode", "stream",
            "--data.input_length", "20", "--data.horizon", "3", "--data.predict_split", "val"]  # fmt: skip
    model = ["--model", "seqstab.tasks.Forecaster", "--model.net.hidden_size", "4"]
    assert main(["fit", *model, *data, "--trainer.max_steps", "2", *QUIET]) == 0
    ckpt = tmp_path / "runs" / "seqstab" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["predict", *model, *data, "--ckpt_path", str(ckpt), *QUIET]) == 0
    rows = list(csv.DictReader((ckpt.parent.parent / "predict" / "predictions.csv").open()))
    assert [r["origin"] for r in rows] == [str(i) for i in range(280, 320)]  # every row of the val split
    assert list(rows[0])[2:5] == ["x_t+1", "x_t+2", "x_t+3"]
    assert rows[-1]["x_t+1_observed"] == ""  # past the split's last row


def test_predict_split_is_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--data", "datamodules.timeseries.SumOfSines", "--data.predict_split", "train", "--model",
            "seqstab.tasks.Forecaster", *QUIET]  # fmt: skip
    assert main(["predict", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqstab.train: error: data.predict_split: ")
    assert "'val', 'test', 'all'" in err[0] and err[0].endswith("train")


LOGGERS = """\
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.TensorBoardLogger
      init_args: {save_dir: runs, name: seqstab, default_hp_metric: false}
    - class_path: pytorch_lightning.loggers.CSVLogger
      init_args: {save_dir: runs, name: csv}
    - class_path: pytorch_lightning.loggers.MLFlowLogger
      init_args: {experiment_name: seqstab, tracking_uri: file:./mlruns}
"""


def test_every_logger_gets_the_same_series_and_mlflow_the_heatmap(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's local file store, no server
    (tmp_path / "loggers.yaml").write_text(LOGGERS)
    tiny = ["--data.num_train", "100", "--data.num_val", "50", "--trainer.max_steps", "3"]
    assert (
        main(
            [
                "fit",
                "--config",
                str(DEFAULT_CONFIG),
                "--config",
                "loggers.yaml",
                *tiny,
                "--model.monitor.grad_flow_every_n_steps",
                "1",
                *QUIET,
            ]
        )
        == 0
    )
    tensorboard = [value for _, value in scalars(tmp_path / "runs" / "seqstab" / "version_0")["grad/norm_total"]]
    with open(tmp_path / "runs" / "csv" / "version_0" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("grad/norm_total")]
    from_csv = [float(row["grad/norm_total"]) for row in logged]
    client = MlflowClient("file:./mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("seqstab").experiment_id])
    from_mlflow = [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "grad/norm_total"), key=lambda m: m.step)
    ]
    assert len(tensorboard) == 3
    assert from_csv == pytest.approx(tensorboard, rel=1e-6) and from_mlflow == pytest.approx(tensorboard, rel=1e-6)
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(name.startswith("images/grad_flow~heatmap") for name in images), images


WANDB = """\
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.TensorBoardLogger
      init_args: {save_dir: runs, name: seqstab, default_hp_metric: false}
    - class_path: pytorch_lightning.loggers.WandbLogger
      init_args: {save_dir: wandb_runs, project: seqstab, offline: true}
"""


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """The history rows of an offline W&B run, read from its ``run-<id>.wandb`` file: a LevelDB-style log (7-byte
    file header; 32 KiB blocks of records, each a 7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST) of
    ``wandb_internal_pb2.Record`` messages. Each row maps a key to its JSON value."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    rows, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


@pytest.fixture(scope="module", autouse=True)
def wandb_run(request, tmp_path_factory):
    """The W&B test's command-line run, started when this module starts: it runs beside the in-process tests."""
    if not asked_for(request) or importlib.util.find_spec("wandb") is None:  # no selected reader, or no W&B
        yield None
        return
    cwd = tmp_path_factory.mktemp("wandb")
    (cwd / "loggers.yaml").write_text(WANDB)
    explode = Path(__file__).resolve().parents[1] / "configs" / "explode" / "adding_rnn.yaml"
    run = start_cli(
        *["fit", "--config", str(explode), "--config", "loggers.yaml", "--trainer.max_steps", "8"],
        *["--data.seq_len", "50", "--data.num_train", "500", "--data.num_val", "50"],
        *["--model.monitor.grad_flow_every_n_steps", "1", "--model.monitor.histogram_every_n_steps", "4", *QUIET],
        cwd=cwd,
        WANDB_SILENT="true",
    )
    yield from until_teardown(run)


def test_wandb_gets_the_series_the_heatmap_histograms_and_explosion_events(wandb_run):
    pytest.importorskip("wandb")
    result, cwd = wandb_run.result(), wandb_run.cwd
    assert result.returncode == 0, result.stderr[-2000:]
    tensorboard = [value for _, value in scalars(cwd / "runs" / "seqstab" / "version_0")["grad/norm_total"]]
    (run_file,) = (cwd / "wandb_runs" / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    norms = {int(row["trainer/global_step"]): float(row["grad/norm_total"]) for row in rows if "grad/norm_total" in row}
    assert [norms[step] for step in sorted(norms)] == pytest.approx(tensorboard, rel=1e-6) and len(norms) == 8
    keys = {key.split("/_type")[0] for row in rows for key in row if key.endswith("/_type")}
    assert "grad_flow/heatmap" in keys, keys  # the image
    assert "hist/grad/net.layers.0.hh" in keys, keys  # a histogram
    assert "explosion/event" in keys, keys  # the guard's event, as a table
    assert list(run_file.parent.glob("files/media/images/grad_flow/heatmap_*.png"))


def test_the_seqstab_command(tmp_path, capsys):
    script = Path(sys.executable).parent / "seqstab"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("seqstab 0.")
    assert cli.main([]) == 0 and "generate" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["fit", "--print_config"]) == 0 and "AddingProblem" in capsys.readouterr().out


@pytest.mark.parametrize("size", [0, 1, 7, 160, 4096])
def test_an_event_record_is_the_bytes_tensorboards_own_writer_writes(size):
    from tensorboard.summary.writer.record_writer import RecordWriter

    data = os.urandom(size)
    theirs = io.BytesIO()
    RecordWriter(theirs).write(data)
    assert record(data) == theirs.getvalue()
