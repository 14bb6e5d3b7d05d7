"""``null`` on the command line for an argument nested in the model is None, as the same ``null`` in a config file.

jsonargparse passes an option two classes deep (``--model.guard.spike_factor``: ``guard`` an argument of the task
given by class path) down one parser at a time, the None formatted as the string ``None`` on the way
(seqstab.cli.argument_parser). A null given to an argument that takes no None is one line, as a config file's is.
"""

from __future__ import annotations

import pytest
import yaml

from seqstab.cli.train import DEFAULT_CONFIG, main
from tests.helpers import REPO
from tests.test_bad_input import QUIET, TINY, run_fails

WIKITEXT2 = str(REPO / "configs" / "lm" / "wikitext2_lstm.yaml")
DEFAULT = ["-c", str(DEFAULT_CONFIG)]  # what a command line naming no model or data runs (a config file naming one not)
SGD = ["--optimizer", "torch.optim.SGD", "--optimizer.lr"]


def printed(args: list[str], capsys) -> dict:
    """``fit ARGS --print_config``, in-process: the config it prints."""
    capsys.readouterr()
    code = main(["fit", *args, "--print_config"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return yaml.safe_load(out)


def at(config: dict, key: str):
    """``model.guard.spike_factor`` of a printed config (through each class's ``init_args``)."""
    for part in key.split("."):
        config = config.get("init_args", config)[part]
    return config


def as_yaml(key: str, value) -> dict:
    """The config file that sets ``key`` (``model.guard.spike_factor``) to ``value``."""
    *parents, leaf = key.split(".")
    content = {leaf: value}
    for part in reversed(parents[1:]):
        content = {part: {"init_args": content}}
    return {parents[0]: {"init_args": content}}


@pytest.mark.parametrize(
    "base,key,option",
    [
        ([], "model.guard.spike_factor", "--model.guard.spike_factor"),
        ([], "model.guard.max_norm", "--model.guard.max_norm"),
        ([], "model.guard.spike_factor", "--model.guard.init_args.spike_factor"),
        ([], "model.net.spectral_radius", "--model.net.spectral_radius"),
        (["-c", WIKITEXT2], "model.monitor.grad_flow_every_n_steps", "--model.monitor.grad_flow_every_n_steps"),
    ],
    ids=["guard.spike_factor", "guard.max_norm", "guard.init_args.spike_factor", "net.spectral_radius", "monitor"],
)
def test_null_for_a_nested_optional_is_none_as_in_a_config_file(here, capsys, base, key, option):
    set_first = printed([*base, option, "1"], capsys)  # a value that is not None, so that null changes something
    assert at(set_first, key) == 1
    from_command_line = printed([*base, option, "1", option, "null"], capsys)
    assert at(from_command_line, key) is None
    (here / "null.yaml").write_text(yaml.safe_dump(as_yaml(key, None)))
    from_file = printed([*(base or DEFAULT), option, "1", "-c", "null.yaml"], capsys)
    assert from_command_line["model"] == from_file["model"]


@pytest.mark.parametrize("null", ["~", "Null", "NULL"])
def test_every_yaml_spelling_of_null_is_none(here, capsys, null):
    assert at(printed(["--model.guard.spike_factor", null], capsys), "model.guard.spike_factor") is None


def test_a_run_with_a_nested_null_has_it_in_its_config(here, capsys):
    assert main(["fit", *TINY, *QUIET, "--model.guard.spike_factor", "null"]) == 0, capsys.readouterr().err[-2000:]
    saved = yaml.safe_load((here / "runs" / "seqstab" / "version_0" / "config.yaml").read_text())
    assert at(saved, "model.guard.spike_factor") is None and at(saved, "model.guard.policy") == "skip"


def fails(args: list[str], capsys, where) -> str:
    """``fit ARGS`` in-process: exit 2, one error line, no traceback, no run directory; the line."""
    capsys.readouterr()
    return run_fails([*args, *TINY], capsys, where)


def test_null_for_an_argument_that_takes_no_none_is_one_line(here, capsys):
    expected = "model.clipping.max_norm=null: must be a number"
    (here / "null.yaml").write_text(yaml.safe_dump(as_yaml("model.clipping.max_norm", None)))
    assert expected in fails([*DEFAULT, "-c", "null.yaml"], capsys, here)  # not the class's TypeError, a traceback
    assert expected in fails(["--model.clipping.max_norm", "null"], capsys, here)  # the command line's: the same
    assert "model.guard.window=null: must be an integer" in fails(["--model.guard.window", "null"], capsys, here)


def test_none_is_not_null_on_the_command_line(here, capsys):
    """As jsonargparse reads any option (a top-level Optional[float] refuses ``None``): the string, not None."""
    line = fails(["--model.guard.spike_factor", "None"], capsys, here)
    assert "model.guard.spike_factor" in line and "float" in line


@pytest.mark.parametrize(
    "args,expected",
    [
        ([*SGD, "null"], "optimizer.lr=null: must be a number"),
        ([*SGD, "0.1", "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "2",
          "--lr_scheduler.gamma", "null"], "lr_scheduler.gamma=null: must be a number"),
        ([*SGD, "0.1", "--lr_scheduler", "pytorch_lightning.cli.ReduceLROnPlateau", "--lr_scheduler.monitor",
          "val/loss", "--lr_scheduler.factor", "null"], "lr_scheduler.factor=null: must be a number"),
    ],
    ids=["optimizer.lr", "lr_scheduler.gamma", "lightning ReduceLROnPlateau.factor"],
)  # fmt: skip
def test_null_for_a_learning_rate_or_a_scheduler_setting_is_one_line(here, capsys, args, expected):
    """torch's classes take these without a check of their own and fail on first use (a TypeError, a traceback);
    Lightning's ``ReduceLROnPlateau`` passes ``factor`` on to torch's through ``**kwargs``, where it is judged. A
    required one (``StepLR``'s ``step_size``) jsonargparse refuses itself."""
    assert expected in fails(args, capsys, here)
