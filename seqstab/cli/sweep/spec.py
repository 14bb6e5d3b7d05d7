"""The sweep file and its combinations.

A sweep file names a base config, overrides shared by every run, a grid over config keys and/or a list of named
variants (each a set of overrides); keys are the dotted keys of ``python -m seqstab.train``, without the leading
``--``::

    # python -m seqstab.sweep --config configs/sweeps/explode.yaml
    name: explode                          # sweep folder <out>/<name>; default: the file's stem
    base: ../explode/adding_rnn.yaml       # config file(s) every run starts from, relative to this file
    args:                                  # overrides shared by every run
      trainer.max_epochs: 5
    grid:                                  # cartesian product
      data.seq_len: [50, 100, 200, 400]
    variants:                              # named override sets, each crossed with the grid
      noclip: {}
      normclip: {model.clipping: {class_path: seqstab.clipping.NormClip, init_args: {max_norm: 1.0}}}
      tbptt20: {model.tbptt_steps: 20, data.seq_len: [200, 400]}  # a grid key set in a variant: only these
    plot:
      x: data.seq_len                      # the x axis of the "against T" plots; default: the first grid key
    search:                                # optional: the stability map (search.py)
      key: optimizer.lr                    # for each combination, the largest value meeting the criterion,
      range: [1.0e-4, 10.0]                # by bisection: that combination's runs in sequence, combinations
      budget: 5                            # in parallel; the report opens with the map

``variants`` may also be a list of one-entry mappings (``[{noclip: {}}, {normclip: {...}}]``). What the file may
not hold is in :mod:`seqstab.cli.sweep.rules` and :func:`seqstab.cli.sweep.folders.check_folder_name`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqstab.cli.sweep.combination import Combination, run_id
from seqstab.cli.sweep.folders import check_folder_name
from seqstab.cli.sweep.rules import check_config_files, check_keys, check_one_folder_each, check_swept_once
from seqstab.cli.sweep.search import SearchSpec
from seqstab.cli.yaml_files import read_yaml
from seqstab.core.errors import ConfigError

SWEEP_KEYS = {"name", "base", "args", "grid", "variants", "plot", "search"}
PLOT_KEYS = {"x"}


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str
    base: list[Path]
    args: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]] | None
    x: str | None
    search: SearchSpec | None = None  # the stability map: bisect one key in every combination (search.py)

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        """Read and check a sweep file; :class:`ConfigError` naming the file (and the variant) for what is wrong."""
        path = Path(path)
        where = f"sweep config {path}"
        if not path.is_file():
            raise ConfigError(f"{where}: no such file")
        try:
            spec = read_yaml(path)
        except ConfigError as err:
            raise ConfigError(f"sweep config {err}") from None
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping with keys {sorted(SWEEP_KEYS)}")
        unknown = set(spec) - SWEEP_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown, key=str)}; allowed: {sorted(SWEEP_KEYS)}")
        name = spec.get("name") or path.stem
        if not isinstance(name, str):
            raise ConfigError(f"{where}: name {name!r}: must be a string")
        check_folder_name(f"{where}: name", name, beside_report=False)
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: args must map keys to values")
        check_keys(where, "args", list(args))
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
            raise ConfigError(f"{where}: grid must map each key to a non-empty list of values")
        check_keys(where, "grid", list(grid))
        variants = _variants(where, spec.get("variants"))
        check_swept_once(where, grid, variants or {})
        search = SearchSpec.parse(spec["search"], where) if spec.get("search") is not None else None
        if search is not None:
            keys = [*grid, *args, *(k for v in (variants or {}).values() for k in v)]
            if search.key in keys:
                raise ConfigError(f"{where}: search.key {search.key!r} is set in args, grid or variants")
        x = _plot_x(where, spec.get("plot"), grid, search)
        sweep = cls(name, _bases(where, path, spec.get("base")), args, grid, variants, x, search)
        combinations = sweep._crossed()
        check_one_folder_each(where, combinations)
        check_config_files(where, combinations, search.key if search else None)
        return sweep

    def combinations(self) -> list[Combination]:
        """Every combination, in order (the same one listed twice runs once)."""
        unique: dict[str, Combination] = {}
        for combination in self._crossed():
            unique.setdefault(combination.id, combination)
        return list(unique.values())

    def _crossed(self) -> list[Combination]:
        """Every variant crossed with the grid. A variant setting a grid key runs at that value only (a list: at
        those values)."""
        found = []
        keys = list(self.grid)
        variants = self.variants.items() if self.variants else [(None, {})]
        for variant, overrides in variants:
            axes = {k: _pinned(overrides[k]) if k in overrides else v for k, v in self.grid.items()}
            own = {k: v for k, v in overrides.items() if k not in self.grid}
            for values in itertools.product(*axes.values()):
                swept = dict(zip(keys, values, strict=True))
                found.append(Combination(run_id(variant, swept), variant, swept, {**self.args, **swept, **own}))
        return found


def _pinned(value: Any) -> list[Any]:
    """A variant's value for a grid key: a list keeps those grid values, anything else pins the key to it."""
    return list(value) if isinstance(value, list) else [value]


def _bases(where: str, path: Path, bases: Any) -> list[Path]:
    """The base config files, each relative to the sweep file."""
    bases = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{where}: base must be a config file's path or a list of them")
    resolved = []
    for base in bases:
        candidate = (path.parent / base).resolve()
        if not candidate.is_file():
            raise ConfigError(f"{where}: base {base!r} not found (looked at {candidate})")
        resolved.append(candidate)
    return resolved


def _variants(where: str, variants: Any) -> dict[str, dict[str, Any]] | None:
    """``variants`` as a mapping of name -> overrides; every name a plain folder name, listed once."""
    if variants is None:
        return None
    if isinstance(variants, list):  # a list of names with their overrides: [{name: {...}}, ...]
        listed: dict[Any, Any] = {}
        for item in variants:
            if not isinstance(item, dict) or len(item) != 1:
                raise ConfigError(f"{where}: variants: each list item must be one name: {{overrides}}, not {item!r}")
            ((name, overrides),) = item.items()
            if name in listed:
                raise ConfigError(f"{where}: variant {name!r} is listed twice; the second would silently win")
            listed[name] = overrides
        variants = listed
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{where}: variants must map names to override mappings")
    names: set[str] = set()
    for name, overrides in variants.items():
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise ConfigError(f"{where}: variant name {name!r} (read from YAML as a {type(name).__name__}): quote it")
        check_folder_name(f"{where}: variant name", str(name))
        if str(name) in names:
            raise ConfigError(f"{where}: variant {str(name)!r} is named twice (once as a number)")
        names.add(str(name))
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"{where}: variant {name!r} must map keys to values")
        check_keys(where, f"variant {name!r}", list(overrides or {}))
    return {str(k): dict(v or {}) for k, v in variants.items()}


def _plot_x(where: str, plot: Any, grid: dict[str, list[Any]], search: SearchSpec | None) -> str | None:
    """The x axis of the "against x" plots: ``plot.x`` (a grid key or the searched key), else the first of those."""
    plot = {} if plot is None else plot
    if not isinstance(plot, dict) or set(plot) - PLOT_KEYS:
        raise ConfigError(f"{where}: plot must be a mapping with keys {sorted(PLOT_KEYS)}")
    swept = [*grid, *([search.key] if search else [])]
    x = plot.get("x", swept[0] if swept else None)
    if x is not None and x not in swept:
        raise ConfigError(f"{where}: plot.x {x!r}: must be a grid key or the search key ({', '.join(swept) or 'none'})")
    return x
