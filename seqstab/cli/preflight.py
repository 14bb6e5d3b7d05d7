"""What ``python -m seqstab.train`` checks before anything is written: one :class:`ConfigError` line each.

the command line          the embedded default experiment unless a model or data is chosen (with_default)
config files              valid YAML, no key twice, a mapping of settings (check_config_files)
settings                  step limits, learning rates and scheduler periods in range, a scheduler with an
                          optimizer, a fit that would train something (check_settings); Lightning's own
                          settings seqstab's loop does not take (seqstab.cli.lightning_settings); null only
                          where a class of seqstab's, a datamodule, an optimizer or a scheduler takes None
                          (check_nulls)
output directories        each can be created and written (check_writable)
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import tempfile
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from seqstab.cli.yaml_files import read_yaml
from seqstab.core.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "SUBCOMMANDS",
    "check_config_files",
    "check_nulls",
    "check_settings",
    "check_writable",
    "with_default",
]

DEFAULT_CONFIG = resources.files("seqstab.cli") / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
POSITIVE = {"optimizer": ("lr",), "lr_scheduler": ("step_size", "T_max", "T_0", "total_steps", "gamma", "factor")}
JUDGED = ("seqstab.", "datamodules.", "torch.optim.", "pytorch_lightning.cli.", "lightning.pytorch.cli.")  # check_nulls
KINDS = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}  # what check_nulls says
CHOOSE_EXPERIMENT = ("model", "data")  # naming either (on the command line or in a config file) leaves the default


def config_paths(args: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` files of a command line, in order."""
    paths = [b for a, b in zip(args, args[1:], strict=False) if a in ("-c", "--config")]
    return paths + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def check_config_files(args: list[str]) -> dict[str, Any]:
    """Each ``--config`` file that exists, read: :class:`ConfigError` naming one that is not valid YAML, repeats a key
    or is not a mapping of settings (jsonargparse would say neither which file nor where). A missing file is left
    to jsonargparse, which names it. Returns ``{path: content}``."""
    read: dict[str, Any] = {}
    for path in config_paths(args):
        if not Path(path).is_file():
            continue
        content = read_yaml(path)
        if content is not None and not isinstance(content, dict):
            kind = "a list" if isinstance(content, list) else f"a single value ({content!r})"
            raise ConfigError(f"{path}: a config file must be a mapping of settings (model:, data:, trainer: ...), "
                              f"this one holds {kind}")  # fmt: skip
        read[path] = content or {}
    return read


def with_default(args: list[str], configs: dict[str, Any] | None = None) -> list[str]:
    """Run the embedded default experiment (``seqstab/cli/default.yaml``) unless a model or data is chosen.

    ``[]`` becomes ``fit`` on the default; ``fit --trainer.max_epochs 1`` and ``fit -c trainer_only.yaml`` override
    the default. ``configs`` are the config files already read (:func:`check_config_files`); a config file not among
    them (missing, unread) counts as choosing both.
    """
    if not args:
        args = ["fit"]
    if args[0] not in SUBCOMMANDS:
        return args
    configs = configs or {}
    flags = {f"--{key}" for key in CHOOSE_EXPERIMENT}
    if any(arg.split("=")[0] in flags for arg in args[1:]):
        return args
    for path in config_paths(args):
        content = configs.get(path)
        if content is None or any(key in content for key in CHOOSE_EXPERIMENT):
            return args
    return [args[0], "--config", str(DEFAULT_CONFIG), *args[1:]]


def check_settings(subcommand: str | None, groups: dict[str, Any]) -> None:
    """Step limits, learning rates and scheduler periods in range (torch accepts some that are not), a scheduler
    with an optimizer (LightningCLI would drop it without a word), and a fit that trains something.

    ``groups``: the config's ``trainer``, ``optimizer`` and ``lr_scheduler`` (None when absent)."""
    trainer = groups.get("trainer")
    for key in ("max_steps", "max_epochs"):
        value = getattr(trainer, key, None)
        if isinstance(value, int) and value < -1:
            raise ConfigError(f"trainer.{key}={value}: must be -1 (no limit) or >= 0")
    if subcommand == "fit":
        check_trains_something(trainer)
    scheduler, optimizer = groups.get("lr_scheduler"), groups.get("optimizer")
    if scheduler is not None and optimizer is None:
        raise ConfigError(
            "lr_scheduler is set but optimizer is not: a scheduler needs --optimizer (the task's default is "
            "--optimizer torch.optim.Adam --optimizer.lr 0.001)"
        )
    for group, keys in POSITIVE.items():
        init_args = getattr(groups.get(group), "init_args", None)
        for key in keys:
            value = getattr(init_args, key, None)
            if isinstance(value, (int, float)) and not value > 0:
                raise ConfigError(f"{group}.{key}={value!r}: must be > 0")


def check_trains_something(trainer: Any) -> None:
    """A fit whose limits allow no update would write a run directory and a checkpoint of the initial weights."""
    for key in ("max_steps", "max_epochs"):
        value = getattr(trainer, key, None)
        if value == 0 and not isinstance(value, bool):
            raise ConfigError(f"trainer.{key}=0: fit would train nothing (give -1 for no limit, or a count >= 1)")
    limit = getattr(trainer, "limit_train_batches", None)
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit == 0:
        raise ConfigError(
            f"trainer.limit_train_batches={limit!r}: fit would train on no batch (give a fraction in (0, 1] or a "
            "count >= 1)"
        )


def check_nulls(config: Any, key: str = "") -> None:
    """``null`` given to an argument that does not take None, of a seqstab class, a datamodule of ``datamodules``, a
    torch optimizer or scheduler (``optimizer.lr``): :class:`ConfigError` naming it (``model.clipping.max_norm=null:
    must be a number``), where jsonargparse lets it through to the class, which would fail with a traceback.
    ``config``: the parsed config (of the subcommand)."""
    if isinstance(config, (list, tuple)):
        for num, item in enumerate(config):
            check_nulls(item, f"{key}.{num}")
        return
    if not isinstance(config, (Namespace, dict)):
        return
    items = vars(config) if isinstance(config, Namespace) else config
    init_args = items.get("init_args")
    if isinstance(items.get("class_path"), str) and init_args is not None:
        parameters = _own_parameters(items["class_path"])
        args = vars(init_args) if isinstance(init_args, Namespace) else init_args
        for name, value in dict(args).items():
            parameter = parameters.get(name)
            if value is None and parameter is not None and not _takes_none(parameter):
                what = _kind(parameter.annotation)
                raise ConfigError(f"{key}.{name}=null: must be {what}, not null (this argument takes no None)")
            check_nulls(value, f"{key}.{name}")
        return
    for name, value in items.items():
        check_nulls(value, f"{key}.{name}" if key else name)


def _own_parameters(class_path: str) -> dict[str, inspect.Parameter]:
    """The ``__init__`` parameters of a class of seqstab's, a datamodule, a torch optimizer or scheduler (Lightning's
    scheduler wrappers too), annotations resolved; a ``**kwargs`` one's go on to its base class's. {} for another's."""
    module, _, name = class_path.rpartition(".")
    if not f"{module}.".startswith(JUDGED):
        return {}
    try:
        parameters: dict[str, inspect.Parameter] = {}
        for cls in getattr(importlib.import_module(module), name).__mro__:
            if "__init__" not in vars(cls):
                continue
            own = inspect.signature(vars(cls)["__init__"], eval_str=True).parameters
            for key, parameter in own.items():
                parameters.setdefault(key, parameter)
            if not any(p.kind is p.VAR_KEYWORD for p in own.values()):
                break
        return parameters
    except Exception:  # not importable or an annotation that does not resolve: jsonargparse's checks stand
        return {}


def _kind(annotation: Any) -> str:
    """What a parameter takes, for the message: ``a number`` for ``float`` (or ``float | Tensor``), and so on."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if candidate in KINDS:
            return KINDS[candidate]
    return "given"


def _takes_none(parameter: inspect.Parameter) -> bool:
    if parameter.default is None or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        return True
    return _admits_none(parameter.annotation)


def _admits_none(annotation: Any) -> bool:
    """Whether a type annotation takes None; True too for what it cannot tell (no annotation, Any, a TypeVar)."""
    if annotation in (inspect.Parameter.empty, Any, object, None, type(None)):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_admits_none(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return None in typing.get_args(annotation)
    if origin is typing.Annotated:
        return _admits_none(typing.get_args(annotation)[0])
    cls = origin if isinstance(origin, type) else annotation
    return not isinstance(cls, type)


def check_writable(trainer) -> None:
    """Raise ConfigError naming the setting whose directory cannot be created or written (where the run writes
    first, first: a full disk is named by the directory of the run)."""
    targets = {}
    for logger in trainer.loggers:
        if getattr(logger, "save_dir", None):
            targets["trainer.logger.save_dir"] = logger.save_dir
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None):
            targets["trainer.callbacks.dirpath"] = cb.dirpath
    targets["trainer.default_root_dir"] = trainer.default_root_dir
    for key, directory in targets.items():
        problem = _unwritable(Path(directory))
        if problem:
            raise ConfigError(f"{key}={str(directory)!r}: cannot write there: {problem}")


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be made in ``directory``, or None, found by trying: the directory is created, a file made
    and removed in it, and whatever this made is removed again (permission bits alone mislead: root passes
    ``os.access`` on ``/proc``)."""
    path = directory.absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    made = []
    try:
        for parent in reversed([path, *path.parents]):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"\0" * 4096)  # a full disk refuses a block, not an empty file
            probe.flush()
    except PermissionError:
        return f"permission denied on {existing}"
    except OSError as err:
        return f"{err.strerror or err} (creating a file in {path})"
    finally:
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
    return None
