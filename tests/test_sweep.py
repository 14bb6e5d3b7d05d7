"""``python -m seqstab.sweep``: the grid x variants schema, a tiny sweep end to end, resuming, the shipped sweeps."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqstab.cli.sweep import DONE_FILE, Combination, Sweep, command, summarize
from seqstab.cli.sweep import main as sweep_main
from seqstab.cli.train import main as train_main
from tests.helpers import REPO, Started, asked_for, until_teardown

BASE = """\
model:
  class_path: seqstab.tasks.SequenceRegressor
  init_args:
    net: {class_path: seqstab.nets.RecurrentNet, init_args: {cell: rnn, hidden_size: 8, spectral_radius: 1.5}}
data:
  class_path: datamodules.synthetic.AddingProblem
  init_args: {seq_len: 6, num_train: 100, num_val: 50, num_test: 50, batch_size: 50}
trainer: {max_epochs: 2, enable_model_summary: false}
"""

TINY = """\
# python -m seqstab.sweep --config tiny.yaml
base: base.yaml
args:
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
grid:
  data.seq_len: [6, 12]
variants:
  noclip: {}
  normclip:
    model.clipping: {class_path: seqstab.clipping.NormClip, init_args: {max_norm: 0.5}}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_sweep(root: Path, text: str = TINY) -> Path:
    (root / "base.yaml").write_text(BASE)
    (root / "tiny.yaml").write_text(text)
    return root / "tiny.yaml"


def test_grid_times_variants_and_pinned_grid_keys(tmp_path):
    path = write_sweep(
        tmp_path,
        TINY
        + "  short: {data.seq_len: 6, model.net.hidden_size: 4}\n"
        + "  some: {data.seq_len: [12], model.net.hidden_size: 2}\n",
    )
    runs = Sweep.load(path).combinations()
    assert [r.id for r in runs] == [
        "noclip-seq_len=6",
        "noclip-seq_len=12",
        "normclip-seq_len=6",
        "normclip-seq_len=12",
        "short-seq_len=6",
        "some-seq_len=12",
    ]
    short = runs[4]
    assert short.values == {"data.seq_len": 6}
    assert short.overrides == {
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
        "data.seq_len": 6,
        "model.net.hidden_size": 4,
    }
    assert runs[2].overrides["model.clipping"]["class_path"] == "seqstab.clipping.NormClip"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("base: nope.yaml\n", "base 'nope.yaml' not found"),
        ("grid: {data.seq_len: 5}\n", "grid must map each key to a non-empty list"),
        ("variants: {'a b': {}}\n", "variant name 'a b'"),
        ("gird: {}\n", "unknown key(s) ['gird']"),
        ("grid: [\n", "not valid YAML"),
        ("name: ../up\n", "name '../up': must be a plain folder name"),
        ("grid: {data.seq_len: [6]}\nplot: {x: data.nope}\n", "plot.x 'data.nope': must be a grid key"),
        ("plot: {y: 1}\n", "plot must be a mapping with keys ['x']"),
        ("grid: {--data.seq_len: [6]}\n", "key '--data.seq_len': must be a dotted config key"),
        ("grid: {data.seq_len: [6], data.init_args.seq_len: [7]}\n", "'data.init_args.seq_len' set the same"),
        ("variants: {yes: {}}\n", "variant name True (read from YAML as a bool): quote it"),
        ("variants: [a, b]\n", "each list item must be one name"),
    ],
)
def test_bad_sweep_file_is_a_one_line_error(tmp_path, capsys, text, needle):
    (tmp_path / "bad.yaml").write_text(text)
    assert sweep_main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqstab.sweep: error:") and needle in err[0], err
    assert not (tmp_path / "out").exists()


NORMCLIP = "{class_path: seqstab.clipping.NormClip, init_args: {max_norm: %s}}"


@pytest.mark.parametrize(
    "variants,grid,named",
    [
        # one name twice: PyYAML would keep the last silently (one run where the file lists two)
        pytest.param(
            "  normclip: {}\n  normclip: {model.net.hidden_size: 4}\n",
            "",
            ["'normclip'", "line 4 and line 5"],
            id="twice",
        ),
        pytest.param(
            "  - normclip: {}\n  - normclip: {model.net.hidden_size: 4}\n",
            "",
            ["'normclip' is listed twice"],
            id="twice_in_a_list",
        ),
        # a grid key set by a variant under another spelling: the variant's value would win, the run be named
        # after the grid's
        pytest.param(
            "  short: {data: {seq_len: 9}}\n",
            "data.seq_len: [6, 12]",
            ["'short'", "'data'", "'data.seq_len'"],
            id="grid_key_as_mapping",
        ),
        pytest.param(
            "  short: {data.init_args.seq_len: 9}\n",
            "data.seq_len: [6, 12]",
            ["'short'", "'data.init_args.seq_len'"],
            id="grid_key_with_init_args",
        ),
        # a variant's folder must be a plain folder name beside the report's files
        pytest.param("  '.': {}\n", "", ["variant name '.'", "plain folder name"], id="dot"),
        pytest.param("  '..': {}\n", "", ["variant name '..'"], id="dotdot"),
        pytest.param("  a/b: {}\n", "", ["variant name 'a/b'"], id="slash"),
        pytest.param("  '': {}\n", "", ["variant name ''"], id="empty"),
        pytest.param(
            "  report.md: {}\n", "", ["variant name 'report.md'", "not ending in .md, .csv or .png"], id="report_md"
        ),
        pytest.param("  stability_map.csv: {}\n", "", ["variant name 'stability_map.csv'"], id="map_csv"),
        pytest.param("  norms.png: {}\n", "", ["variant name 'norms.png'"], id="plot_png"),
        # two combinations, one folder: a class is named by its class name alone; a name that differs in case only
        pytest.param(
            "  big: {}\n",
            f"model.clipping: [{NORMCLIP % 1}, {NORMCLIP % 0.5}]",
            ["variant 'big' (model.clipping=", "same folder 'big-clipping=NormClip'"],
            id="class_name",
        ),
        pytest.param(
            "  Clip: {}\n  clip: {model.net.hidden_size: 4}\n",
            "",
            ["variant 'Clip'", "variant 'clip'", "ignores case"],
            id="case",
        ),
        # overrides that make no config file: a key set to a value and given keys under it
        pytest.param(
            "  deep: {model.net.hidden_size.x: 4}\n",
            "",
            ["variant 'deep'", "'hidden_size' is set to a value"],
            id="not_a_config_file",
        ),
    ],
)
def test_a_sweep_file_that_would_run_other_runs_than_it_lists_is_refused(tmp_path, capsys, variants, grid, named):
    """Exit 2, one line naming the sweep file and the variant, and no sweep folder."""
    grid = f"grid: {{{grid}}}" if grid else "args: {model.net.hidden_size: 8}"
    path = write_sweep(tmp_path, f"base: base.yaml\n{grid}\nvariants:\n{variants}")
    assert sweep_main(["--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"seqstab.sweep: error: sweep config {path}: "), err
    assert all(part in err[0] for part in named), err[0]
    assert not (tmp_path / "out").exists()


def test_a_variant_pins_a_grid_key_by_its_own_name_and_list_writes_nothing(tmp_path, capsys):
    """Under the grid's own key a variant pins it (only these values, named after them); ``--list`` runs and
    writes nothing."""
    path = write_sweep(tmp_path, TINY + "  short: {data.seq_len: 7}\n")
    assert sweep_main(["--config", str(path), "--out", str(tmp_path / "out"), "--list"]) == 0
    listed = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed[-1] == "short-seq_len=7" and len(listed) == 5
    assert not (tmp_path / "out").exists()


def test_spike_count_counts_the_guards_spike_and_non_finite_events():
    """The report's spike count: events whose reason is a spike or a non-finite norm (an event for max_norm is not)."""
    norms = [(0, 1.0), (1, 50.0), (2, float("inf")), (3, 9.0), (4, 60.0)]
    reasons = ["spike", "non-finite", "max_norm", "spike"]
    events = [{"update": u, "reason": r} for u, r in zip([1, 2, 3, 4], reasons, strict=True)]
    data = {"scalars": {"grad/norm_total": norms}, "events": events, "manifest": None, "done": {"wall_s": 1.0}}
    row = summarize(Combination("r", None, {}), {**data, "failed": None})
    assert row["spike_count"] == 3 and row["first_explosion_step"] == 1
    quiet = summarize(Combination("q", None, {}), {**data, "events": [], "failed": None})
    assert quiet["spike_count"] == 0
    missing = {"scalars": {}, "events": [], "manifest": None, "done": None, "failed": None}
    assert summarize(Combination("m", None, {}), missing)["spike_count"] is None  # a run that logged nothing: unknown


SHIPPED = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweep_variants_parse(path, tmp_path, monkeypatch, capsys):
    """Each variant of each shipped sweep is a config the CLI accepts (checked with --print_config, not trained)."""
    monkeypatch.chdir(tmp_path)
    sweep = Sweep.load(path)
    seen = set()
    for run in sweep.combinations():
        if run.variant in seen:
            continue
        seen.add(run.variant)
        args = command(sweep, run, tmp_path / "out" / run.id)[3:]  # after `python -m seqstab.train`
        assert train_main([*args, "--print_config"]) == 0, (run.id, capsys.readouterr().err[-2000:])
    assert seen == set(sweep.variants or [None])
    capsys.readouterr()


SLOW = BASE.replace(
    "trainer: {max_epochs: 2, enable_model_summary: false}",
    "trainer:\n  max_epochs: 2\n  enable_model_summary: false\n"
    "  callbacks: [{class_path: tests.test_resume.Pace, init_args: {after: 0, seconds: 2}}]",
)


def start_slow_sweep(tmp_path: Path) -> subprocess.Popen:
    """A 4-run sweep whose runs take ~18 s each (a 2 s pause after every batch), started as a user would."""
    path = write_sweep(tmp_path)
    (tmp_path / "base.yaml").write_text(SLOW)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "seqstab.sweep", "--config", str(path), "--out", "out"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "out" / "tiny" / "noclip-seq_len=6"
    deadline = time.monotonic() + 60
    while not list(first.glob("events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.1)  # until the first run trains (its logger has written its event file)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    return proc


def test_ctrl_c_stops_the_running_run_starts_no_other_and_writes_the_report(tmp_path, capsys):
    proc = start_slow_sweep(tmp_path)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - started < 30  # not the other three runs' worth of time
    assert out.strip().splitlines()[-1].startswith("seqstab.sweep: stopped: 0/4 runs done")
    assert "Traceback" not in err
    sweep_dir = tmp_path / "out" / "tiny"
    assert (sweep_dir / "report.md").is_file()
    first = sweep_dir / "noclip-seq_len=6"
    assert not (first / DONE_FILE).exists() and not (first / "failed.json").exists()  # interrupted, not failed
    assert not (sweep_dir / "normclip-seq_len=12").exists()  # never started
    report_only = ["--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out"), "--report-only"]
    assert sweep_main(report_only) == 1  # unfinished runs: non-zero (in-process: the command's main, as above)
    assert "MISSING noclip-seq_len=6" in capsys.readouterr().err


def test_a_second_ctrl_c_ends_the_sweep_at_once(tmp_path):
    """The sweep's stop switch in a process of its own, with a child that would sleep a minute: the first SIGINT
    ends the child, the second ends the process at once with 130."""
    code = (
        "import os, signal, subprocess\n"
        "from seqstab.sweep import Stop\n"
        "stop = Stop()\n"
        "child = stop.start(['sleep', '60'], subprocess.DEVNULL, dict(os.environ))\n"
        "signal.signal(signal.SIGINT, stop.handle)\n"
        "print(child.pid, flush=True)\n"
        "while True:\n"
        "    signal.pause()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the first one: children told to end, the sweep itself goes on to its report
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"  # gone, or dead and not yet reaped


SEARCH = """\
base: base.yaml
args:
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
search: {key: optimizer.lr, range: [1.0e-3, 1.0e+3], scale: log, budget: 2}
variants:
  noclip: {}
  normclip:
    model.clipping: {class_path: seqstab.clipping.NormClip, init_args: {max_norm: 0.5}}
  stalled:  # every update flagged and withheld: the guard stops the run after 2 (exit 3), a finished run
    model.guard: {class_path: seqstab.guard.ExplosionGuard, init_args: {max_norm: 1.0e-9, max_consecutive_skips: 2}}
"""


def test_search_sweep_bisects_each_variant_and_opens_the_report_with_the_stability_map(tmp_path, capsys):
    path = write_sweep(tmp_path, SEARCH)
    out = ["--config", str(path), "--out", str(tmp_path / "out")]
    assert sweep_main([*out, "--jobs", "2", "--threads", "1"]) == 0  # a run the guard stopped is no failure
    printed = capsys.readouterr().out
    assert "6 run(s) now, 6/6 done" in printed
    assert "2 stopped by the explosion guard (exit 3; 'guard stopped' in the report): stalled-lr=" in printed
    sweep_dir = tmp_path / "out" / "tiny"
    with open(sweep_dir / "report.csv") as f:
        rows = list(csv.DictReader(f))
    with open(sweep_dir / "stability_map.csv") as f:
        combinations = {c["combination"]: c for c in csv.DictReader(f)}
    assert list(combinations) == ["noclip", "normclip", "stalled"]
    for variant, combination in combinations.items():
        first, second = [r for r in rows if r["variant"] == variant]
        status = "guard stopped" if variant == "stalled" else "done"
        assert first["run"] == f"{variant}-lr=1.0" and first["status"] == second["status"] == status
        assert (int(first["updates"]) < 4) == (variant == "stalled")  # stopped before the 4 updates of 2 epochs
        # the second run bisects the half the first one left: above 1 if it met the criterion, below if not
        met = first["criterion"] == "met"
        assert float(second["optimizer.lr"]) == pytest.approx(10**1.5 if met else 10**-1.5, rel=1e-5)
        passed = [float(r["optimizer.lr"]) for r in (first, second) if r["criterion"] == "met"]
        assert combination["largest"] == (repr(max(passed)) if passed else "") and combination["state"] == "done"
        assert float(combination["bracket_high"]) / float(combination["bracket_low"]) == pytest.approx(
            10**1.5, rel=1e-5
        )
    report = (sweep_dir / "report.md").read_text()
    assert report.startswith("# Sweep `tiny`\n\n## Stability map: the largest `optimizer.lr` that meets `stable`")
    assert "| variant | largest stable lr | bracket | runs | state |" in report and "| 2/2 | done |" in report
    assert (sweep_dir / "stability_map.png").read_bytes()[:4] == b"\x89PNG"

    assert sweep_main(out) == 0  # finished: the bisection replays from the run directories, nothing runs again
    assert "0 run(s) now, 6/6 done" in capsys.readouterr().out


# -- whole sweeps as a user starts them, started when this module starts ----------------------------------------------

BROKEN = "base: base.yaml\nvariants:\n  broken: {model.net.hidden_size: -1}\n"


@pytest.fixture(scope="module", autouse=True)
def started(request, tmp_path_factory):
    """``python -m seqstab.sweep`` of the tests below, started when this module starts (each in a folder of its own):
    their runs share the cores with the tests above, mostly one process busy at a time."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    sweeps = {}
    for name, text, jobs in (("broken", BROKEN, "1"), ("tiny", TINY, "2")):
        cwd = tmp_path_factory.mktemp(name)
        cmd = [sys.executable, "-m", "seqstab.sweep", "--config", str(write_sweep(cwd, text)), "--out", "out"]
        sweeps[name] = Started([*cmd, "--jobs", jobs], cwd=cwd, env=env, timeout=600)
    yield from until_teardown(sweeps)


def test_failed_run_is_reported_and_not_marked_done(started):
    result, cwd = started["broken"].result(), started["broken"].cwd
    assert result.returncode == 1 and "FAILED broken (exit 2)" in result.stderr, result.stderr[-3000:]
    run_dir = cwd / "out" / "tiny" / "broken"
    assert not (run_dir / DONE_FILE).exists() and "hidden_size=-1" in (run_dir / "train.log").read_text()
    with open(cwd / "out" / "tiny" / "report.csv") as f:
        assert next(csv.DictReader(f))["status"] == "failed (exit 2)"


def test_tiny_sweep_writes_report_and_plots_and_resumes(started, capsys):
    result, cwd = started["tiny"].result(), started["tiny"].cwd
    path = cwd / "tiny.yaml"
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = cwd / "out" / "tiny"
    assert "4 run(s) now, 4/4 done" in result.stdout
    assert "4/4" in result.stderr  # the progress bar

    with open(sweep_dir / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [
        "noclip-seq_len=6",
        "noclip-seq_len=12",
        "normclip-seq_len=6",
        "normclip-seq_len=12",
    ]
    for column in (
        "variant",
        "data.seq_len",
        "first_explosion_step",
        "first_nonfinite_step",
        "spike_count",
        "max_pre_clip_norm",
        "frac_clipped",
        "final_train_loss",
        "final_val/loss",
        "chance_loss",
        "wall_s",
    ):
        assert column in rows[0], column
    assert all(r["status"] == "done" and r["updates"] == "4" for r in rows)
    assert float(rows[0]["chance_loss"]) == pytest.approx(1 / 6)
    assert float(rows[0]["frac_clipped"]) == 0.0 and float(rows[2]["frac_clipped"]) > 0  # NormClip at 0.5 clips
    assert [r["data.seq_len"] for r in rows] == ["6", "12", "6", "12"]
    report = (sweep_dir / "report.md").read_text()
    assert "| noclip | 6 | done |" in report and "![norms.png](norms.png)" in report
    for png in ("norms.png", "metric_vs_seq_len.png"):
        assert (sweep_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for r in rows:  # each run is an ordinary run directory
        run_dir = sweep_dir / r["run"]
        assert {"config.yaml", "manifest.json", DONE_FILE, "train.log"} <= {p.name for p in run_dir.iterdir()}

    # rerun: everything is finished, nothing runs again
    events = sorted(sweep_dir.rglob("events.out.tfevents.*"))
    assert sweep_main(["--config", str(path), "--out", str(cwd / "out")]) == 0
    assert "0 run(s) now, 4/4 done" in capsys.readouterr().out
    assert sorted(sweep_dir.rglob("events.out.tfevents.*")) == events

    # an interrupted run (no done marker) is the only one left to do
    (sweep_dir / "normclip-seq_len=12" / DONE_FILE).unlink()
    assert sweep_main(["--config", str(path), "--out", str(cwd / "out"), "--list"]) == 0
    states = dict(line.split(":")[0].split(" ") for line in capsys.readouterr().out.splitlines())
    assert states == {r["run"]: "[todo]" if r["run"] == "normclip-seq_len=12" else "[done]" for r in rows}
