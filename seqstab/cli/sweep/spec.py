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

``variants`` may also be a list of one-entry mappings (``[{noclip: {}}, {normclip: {...}}]``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqstab.cli.sweep.combination import Combination, run_id
from seqstab.cli.sweep.search import SearchSpec
from seqstab.core.errors import ConfigError

SWEEP_KEYS = {"name", "base", "args", "grid", "variants", "plot", "search"}


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
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep config {path}: no such file")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"sweep config {path}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep config {path}: must be a mapping with keys {sorted(SWEEP_KEYS)}")
        unknown = set(spec) - SWEEP_KEYS
        if unknown:
            raise ConfigError(f"sweep config {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
        bases = spec.get("base") or []
        bases = [bases] if isinstance(bases, str) else list(bases)
        resolved = []
        for base in bases:
            candidate = (path.parent / base).resolve()
            if not candidate.is_file():
                raise ConfigError(f"sweep config {path}: base {base!r} not found (looked at {candidate})")
            resolved.append(candidate)
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
            raise ConfigError(f"sweep config {path}: grid must map each key to a non-empty list of values")
        variants = spec.get("variants")
        if variants is not None:
            if isinstance(variants, list):  # a list of names with their overrides: [{name: {...}}, ...]
                variants = {k: v for item in variants for k, v in item.items()}
            if not isinstance(variants, dict) or not variants:
                raise ConfigError(f"sweep config {path}: variants must map names to override mappings")
            for vname, overrides in variants.items():
                if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(vname)):
                    raise ConfigError(f"sweep config {path}: variant name {vname!r} must match [A-Za-z0-9_.+-]+")
                if overrides is not None and not isinstance(overrides, dict):
                    raise ConfigError(f"sweep config {path}: variant {vname!r} must map keys to values")
            variants = {str(k): dict(v or {}) for k, v in variants.items()}
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"sweep config {path}: args must map keys to values")
        search = SearchSpec.parse(spec["search"], f"sweep config {path}") if spec.get("search") is not None else None
        if search is not None:
            keys = [*grid, *args, *(k for v in (variants or {}).values() for k in v)]
            if search.key in keys:
                raise ConfigError(f"sweep config {path}: search.key {search.key!r} is set in args, grid or variants")
        plot = spec.get("plot") or {}
        x = plot.get("x") if isinstance(plot, dict) else None
        if x is None and grid:
            x = next(iter(grid))
        if x is None and search is not None:
            x = search.key
        return cls(str(spec.get("name") or path.stem), resolved, args, grid, variants, x, search)

    def combinations(self) -> list[Combination]:
        """Every combination, in order. A variant setting a grid key runs at that value only (a list: those
        values)."""
        found: dict[str, Combination] = {}
        keys = list(self.grid)
        variants = self.variants.items() if self.variants else [(None, {})]
        for variant, overrides in variants:
            axes = {k: _pinned(overrides[k]) if k in overrides else v for k, v in self.grid.items()}
            own = {k: v for k, v in overrides.items() if k not in self.grid}
            for values in itertools.product(*axes.values()):
                swept = dict(zip(keys, values, strict=True))
                combination = Combination(run_id(variant, swept), variant, swept, {**self.args, **swept, **own})
                found.setdefault(combination.id, combination)
        return list(found.values())


def _pinned(value: Any) -> list[Any]:
    """A variant's value for a grid key: a list keeps those grid values, anything else pins the key to it."""
    return list(value) if isinstance(value, list) else [value]
