"""Why did it explode: four planted causes, each run through the CLI, each diagnosed as its own top cause."""

from __future__ import annotations

import json
import math

import pytest

from seqstab.cli.replay import main as replay_main
from seqstab.cli.train import main
from seqstab.core.diagnose import Finding, rank
from tests.helpers import REPO

CAUSES = REPO / "configs" / "explode"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
FAST = ["--trainer.limit_val_batches", "1", *QUIET]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def events(tmp_path) -> list[dict]:
    path = tmp_path / "runs" / "seqstab" / "version_0" / "explosions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("cause", ["time", "depth", "optimizer", "data"])
def test_planted_cause_is_the_top_diagnosis(cause, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(CAUSES / f"cause_{cause}.yaml"), *FAST])
    assert code == (3 if cause in ("time", "depth") else 0)  # 3: stopped at update 0, before any was applied
    (event,) = events(tmp_path)  # policy stop: the run ends at its first event
    diagnosis = event["diagnosis"]
    assert diagnosis["top"] == cause, diagnosis
    first = diagnosis["ranked"][0]
    assert first["mechanism"] == cause and float(first["score"]) >= 1 and first["remedies"]
    assert {f["mechanism"] for f in diagnosis["ranked"]} == {"time", "depth", "optimizer", "data"}
    out = capsys.readouterr().out
    assert f"seqstab: why: {cause} (" in out and first["evidence"] in out  # the console line says the same

    snapshot = tmp_path / "runs" / "seqstab" / "version_0" / event["snapshot"]
    assert replay_main([str(snapshot)]) == 0  # recomputes the flow, ranks the same way
    replayed = capsys.readouterr().out.split("diagnosis (")[1]
    assert f"why: {cause} (" in replayed


def test_time_evidence_is_the_radius(tmp_path, monkeypatch):
    """W_hh = 1.2 Q, linear: ‖∂L/∂h_t‖ grows exactly 1.2x per step back, and peaks at the first step."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CAUSES / "cause_time.yaml"), *FAST]) == 3
    time = events(tmp_path)[0]["diagnosis"]["ranked"][0]
    assert "grows 1.2x per step back over the 200-step chunk and peaks at step 1," in time["evidence"]
    assert float(time["score"]) == pytest.approx(199 * math.log10(1.2), abs=0.05)
    assert "--model.tbptt_steps 12" in time["remedies"]


def test_no_explosion_no_diagnosis(tmp_path, monkeypatch, capsys):
    """The data setup without its outlier batch: no event, no explosions.jsonl, no diagnosis printed."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CAUSES / "cause_data.yaml"), "--data.spike_scale", "1", *FAST]) == 0
    assert events(tmp_path) == []
    assert "why:" not in capsys.readouterr().out


def test_rank_orders_by_score_and_needs_tenfold_for_a_cause():
    ranked = rank([Finding("time", 0.5, "a"), Finding("depth", None, "b"), Finding("data", math.inf, "c")])
    assert [f["mechanism"] for f in ranked["ranked"]] == ["data", "time", "depth"]
    assert ranked["top"] == "data" and ranked["ranked"][0]["score"] == "inf"  # JSON has no inf
    assert rank([Finding("time", 0.9, "a"), Finding("optimizer", math.nan, "b")])["top"] is None
