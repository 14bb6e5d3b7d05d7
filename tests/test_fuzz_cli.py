"""Config fuzzing: random values (legal, illegal, absurd) for the main keys end in a run or one clear error line,
never in a traceback."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqstab.cli.train import main

NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e309", "abc", "", "0", "-0.0", "2.5"])
SIZES = st.one_of(st.integers(-2, 12), NUMBERS)
FLOATS = st.one_of(st.floats(-1.5, 2.0, allow_nan=False), NUMBERS)

KEYS = {
    "--model.net.hidden_size": SIZES,
    "--model.net.num_layers": st.one_of(st.integers(-1, 3), NUMBERS),
    "--model.tbptt_steps": st.one_of(st.just("null"), SIZES),
    "--model.net.dropout": FLOATS,
    "--model.net.cell": st.sampled_from(["rnn", "lstm", "gru", "transformer", "RNN"]),
    "--model.net.spectral_radius": st.one_of(st.just("null"), FLOATS),
    "--model.clipping.max_norm": FLOATS,
    "--optimizer.lr": FLOATS,
    "--data.seq_len": SIZES,
    "--data.batch_size": SIZES,
}


@st.composite
def configs(draw) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=5, unique=True))
    args = []
    for key in chosen:
        args += [key, str(draw(KEYS[key]))]
    return args


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(configs())
def test_random_config_runs_or_fails_in_one_line(args):
    base = ["fit", "--data.num_train", "16", "--data.num_val", "8", "--optimizer", "Adam", *args]
    base += ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    err, out = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = main(base)  # any exception other than a user error propagates and fails the test
        finally:
            os.chdir(cwd)
    errors = [line for line in err.getvalue().splitlines() if line.startswith("seqstab.train: error:")]
    assert code in (0, 2), (args, code, err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue(), (args, err.getvalue()[-2000:])
    assert len(errors) == (1 if code == 2 else 0), (args, err.getvalue()[-2000:])
