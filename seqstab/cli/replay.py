"""``python -m seqstab.replay RUN_DIR/snapshot_update_<N>.pt``: recompute the update the explosion guard flagged.

The snapshot (written by :class:`seqstab.guard.ExplosionGuard` at its first event) holds the weights and optimizer
state of the flagged update, what was trained on (packed: its tensors and a plain description of their structure,
:func:`seqstab.core.plain.pack`), the hidden state it started from, the RNG state before its forward pass and the
clipping policy's settings. Replay rebuilds the model, computes the loss as training did and runs it through the
same update core (:class:`seqstab.update.UpdateCore`, with the run's policy, stepping nothing), then prints the
pre-clip gradient norm (in the policy's own norm), the norm the run logged, whether the two are bitwise equal (on
CPU, with the run's thread count, they are) and the per-parameter breakdown.

How the model is rebuilt and its loss computed depends on where the update came from (the snapshot's ``source``):

* ``task``, one of seqstab's tasks: from its class path and hyperparameters; the loss is ``SeqTask.chunk_loss`` of
  the chunk from its hidden state.
* ``module``, a LightningModule under the ``GradientStability`` callback: as ``cls(**hparams)`` where it saved plain
  hyperparameters (``save_hyperparameters()``), else by a factory you name (``--module``: darts', pytorch-forecasting's
  and neuralforecast's modules hold objects in theirs); the loss is its ``training_step(batch, batch_idx)``.
* ``loop``, a training loop of your own around ``UpdateCore``: by a factory (``--module``) and a loss function
  (``--loss``, called as ``loss(module, batch)``).

The factory is called with no arguments and returns the ``nn.Module`` (a class with defaults will do); the
snapshot's weights are loaded into it. The same from Python: ``seqstab.replay.replay(snapshot, module=build_model)``.
Not replayable: steps of gradient accumulation (the snapshot holds the last batch only), a ``training_step`` that
reads the Trainer, a run under AMP bitwise (replay computes in float32).

    python -m seqstab.replay runs/seqstab/version_0/snapshot_update_5.pt
    python -m seqstab.replay RUN_DIR/snapshot_update_3.pt --trust mynets     # a net of one's own, module mynets
    python -m seqstab.replay RUN_DIR/snapshot_update_0.pt --origin           # where a NaN came from
    python -m seqstab.replay lightning_logs/version_0/snapshot_update_40.pt --module mypkg.build_model
    python -m seqstab.replay run/snapshot_update_7.pt --module train.Net --loss train.loss_of

A snapshot is data, and replay runs no code it names: every class it names (the model, its net, the clipping
policy, a dataclass or named tuple of the batch) must come from seqstab itself, from a module already imported
(by the factory you named, for one), or from a module given with ``--trust``; anything else is refused before it is
imported (``python -m`` puts the working directory on ``sys.path``, so a ``.py`` file beside a snapshot would
otherwise run). What ``--module`` and ``--loss`` name is yours: naming it trusts it.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqstab.cli.console import ToolParser, error_line, tool_main
from seqstab.cli.origin import snapshot_origin
from seqstab.cli.rebuild import (  # rebuild_model, source_of: also seqstab.replay's (cli/lm.py, users)
    callable_at,
    from_factory,
    inputs_of,
    loss_of,
    rebuild_model,
    run_rng,
    source_of,
)
from seqstab.core import diagnose
from seqstab.core import io as checkpoint
from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.diagnose.remedies import library_of
from seqstab.core.errors import ConfigError, DataError, SeqstabError
from seqstab.core.guard import SNAPSHOT_FORMAT, grad_norms
from seqstab.core.guard.snapshot import READABLE_FORMATS
from seqstab.core.io import CheckpointError
from seqstab.core.recipes import resolve
from seqstab.core.record import StaticRun
from seqstab.core.update import UpdateCore

REQUIRED = {  # what replay reads of every snapshot, and its type
    "task_class": str,
    "state_dict": dict,
    "update": int,
    "global_step": int,
    "epoch": int,
    "logged": dict,
}


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Load a snapshot safely (``weights_only=True``); a missing, truncated or foreign file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"snapshot {path}: no such file")
    try:
        snapshot = checkpoint.load(path, kind="snapshot")
    except CheckpointError as err:  # truncated zip, tampered pickle, unsafe globals: named, no advice to unsafe-load
        raise DataError(f"snapshot {err}") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") not in READABLE_FORMATS:
        raise DataError(f"snapshot {path}: not a seqstab replay snapshot (format {SNAPSHOT_FORMAT!r} expected)")
    return snapshot


def check_complete(snapshot: dict[str, Any], name: str = "snapshot") -> None:
    """A :class:`DataError` naming the first of what replay reads that a (damaged) snapshot lacks."""
    for key, kind in REQUIRED.items():
        if not isinstance(snapshot.get(key), kind) or isinstance(snapshot.get(key), bool):
            raise DataError(f"{name}: its {key!r} is missing or not a {kind.__name__} (a damaged file?)")
    if not isinstance(snapshot["logged"].get("grad/norm_total"), (int, float)):
        raise DataError(f"{name}: it holds no logged grad/norm_total to compare with (a damaged file?)")


def class_paths(value: Any) -> list[str]:
    """Every class path a snapshot names: its model, and any ``{"class_path": ...}`` inside (a net, a policy)."""
    found = []
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str):
            found.append(value["class_path"])
        for item in value.values():
            found += class_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += class_paths(item)
    return found


def check_trusted(snapshot: dict[str, Any], trust: list[str], what: str = "snapshot", model: bool = True) -> None:
    """Refuse, before importing anything, a class path whose module is not seqstab's own, not imported yet and not
    given with ``--trust`` (``what``: the file, for the message; generate and score apply the same rule). ``model``:
    the model is rebuilt from the snapshot's class path (False: a factory builds it, and only the classes of the
    batch and the clipping policy are imported)."""
    if model:
        names = [snapshot.get("task_class", ""), *class_paths(snapshot.get("hparams")), *class_paths(snapshot)]
    else:
        parts = (snapshot.get("chunk"), snapshot.get("hidden_in"), snapshot.get("clipping"))
        names = [name for part in parts for name in class_paths(part)]
    for path in dict.fromkeys(name for name in names if isinstance(name, str)):  # a damaged file's are checked later
        if not all(part.isidentifier() for part in path.split(".")):
            raise ConfigError(f"{what} names {path!r} as a class, which is no class path (a damaged file?)")
        module = str(path).rpartition(".")[0]
        own = module == "seqstab" or module.startswith("seqstab.")
        if not (own or module in sys.modules or any(module == t or module.startswith(f"{t}.") for t in trust)):
            raise ConfigError(
                f"{what} names {path}, from module {module!r}, which seqstab does not import on a {what}'s word: "
                f"run it again with --trust {module} if you trust that module"
            )


def rebuild_policy(snapshot: dict[str, Any]) -> tuple[ClipPolicy, bool]:
    """The run's clipping policy from its recorded settings, and whether it is stateless (then its post-clip norm
    replays too; a stateful one's threshold depended on the norms before, which the snapshot does not hold)."""
    recipe = snapshot.get("clipping")
    if not recipe:
        return NoClip(), True
    try:
        policy = resolve(recipe["class_path"], ClipPolicy, "snapshot clipping")(**recipe.get("init_args", {}))
    except (ConfigError, TypeError, KeyError, AttributeError):  # a damaged recipe, too
        return NoClip(), False  # a policy of the user's that cannot be rebuilt: measure as NoClip (the L2 norm)
    return policy, not policy.state_dict()


def replay(
    snapshot: dict[str, Any] | str | Path,
    trust: list[str] = (),
    name: str = "snapshot",
    module: nn.Module | Callable[[], nn.Module] | str | None = None,
    loss: Callable[[nn.Module, Any], torch.Tensor] | str | None = None,
) -> dict[str, Any]:
    """Recompute the snapshot's update: its loss, pre-clip global gradient norm, per-parameter norms, and (for a
    stateless policy) the post-clip norm. Classes come only from trusted modules (:func:`check_trusted`).

    Runs with the run's thread count and RNG state; the caller's thread count and RNG states are restored after.

    Args:
        snapshot: The snapshot (as :func:`load_snapshot` returns it), or its path.
        trust: Modules whose classes the snapshot may name (``--trust``).
        name: How messages name the snapshot.
        module: Builds the model instead of its class path and hyperparameters: an ``nn.Module`` (its weights are
            replaced by the snapshot's), a callable returning one (a class, a factory function), or the dotted path
            of such a callable (``mypkg.build_model``, imported: naming it trusts its module). Needed where the
            module saved no plain hyperparameters (darts, pytorch-forecasting, neuralforecast) and for a loop's.
        loss: ``loss(module, batch) -> loss tensor`` (or its dotted path): how a loop of one's own computed the loss
            of the batch; None uses ``training_step(batch, batch_idx)`` (a LightningModule) or ``chunk_loss`` (a task).

    Returns:
        ``loss``, ``norm``, ``post_norm``, ``policy``, ``grad_norms`` and ``diagnosis``.

    Raises:
        ConfigError: a class the snapshot names is not trusted, the model cannot be rebuilt, the factory's module
            does not fit the snapshot's weights, or the loss cannot be computed as given.
        DataError: a damaged snapshot, or one whose batch could not be stored.
    """
    if not isinstance(snapshot, dict):
        name = f"snapshot {snapshot}" if name == "snapshot" else name
        snapshot = load_snapshot(snapshot)
    factory = callable_at(module, "--module") if isinstance(module, str) else module
    loss_fn = callable_at(loss, "--loss") if isinstance(loss, str) else loss
    if factory is None:
        check_trusted(snapshot, list(trust))  # before anything the snapshot names is imported
    check_complete(snapshot, name)
    if snapshot.get("unreplayable"):
        raise DataError(f"{name}: its update cannot be replayed: {snapshot['unreplayable']}")
    threads = torch.get_num_threads()
    try:
        with run_rng(snapshot.get("rng") or {}) as rng:
            try:  # what a damaged snapshot breaks: its model, its RNG state, its chunk
                if snapshot.get("num_threads"):
                    torch.set_num_threads(int(snapshot["num_threads"]))  # CPU kernels' summation order follows it
                model = rebuild_model(snapshot) if factory is None else from_factory(factory, snapshot, name)
                if factory is not None:  # the batch's classes: seqstab's, trusted, or imported by your factory
                    check_trusted(snapshot, list(trust), model=False)
                model.train()
                chunk, hidden_in = inputs_of(snapshot)
                rng()  # the dropout masks (and any sampling) of the original forward
                loss_value = loss_of(model, snapshot, chunk, hidden_in, loss_fn)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
                if isinstance(err, SeqstabError):
                    raise
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise DataError(f"{name}: its update cannot be replayed ({type(err).__name__}: {first})") from None
            policy, stateless = rebuild_policy(snapshot)
            params = [p for p in model.parameters() if p.requires_grad]
            core, run = UpdateCore(policy), StaticRun(model)
            update = core.update(run, params, loss_value, backward=torch.Tensor.backward, step=_nothing, log=False)
            core.flush(run)
            why = "the model offers no recurrent layers to follow (seqstab.nets: recurrent contract)"
            net = getattr(model, "net", model)
            try:
                rng()
                profile = diagnose.flow_profile(net, lambda: loss_of(model, snapshot, chunk, hidden_in, loss_fn))
            except Exception as err:  # the norm above is replay's answer; the diagnosis is a bonus
                profile, why = None, f"the flow could not be measured ({type(err).__name__}: {err})"
            door = {"task": "cli", "module": "callback", "loop": "loop"}[source_of(snapshot)]
            remedies = diagnose.remedies_for(net, policy, door=door, library=library_of(model))  # time, depth
            return {
                "diagnosis": diagnose.rediagnose(snapshot.get("diagnosis"), profile, why, remedies),
                "loss": update.values["train/loss"],
                "norm": update.values["grad/norm_total"],
                "post_norm": update.values["grad/norm_total_clipped"] if stateless else None,
                "policy": type(policy).__name__,
                "grad_norms": grad_norms(model, update.clip.tensor_norms),
            }
    finally:
        torch.set_num_threads(threads)


def _nothing() -> None:
    pass


def _origin(snapshot: dict[str, Any], module: str | None, name: str) -> list[str]:
    """``--origin``'s lines: the search of :mod:`seqstab.cli.origin` on the snapshot as training held it (its batch
    unpacked), its model built as replay built it (by the ``--module`` factory where one is named)."""
    chunk, hidden_in = inputs_of(snapshot)
    view = {**snapshot, "chunk": chunk, "hidden_in": hidden_in, "kind": source_of(snapshot)}
    factory = callable_at(module, "--module") if module else None
    build = rebuild_model if factory is None else (lambda s: from_factory(factory, s, name))
    return snapshot_origin(view, build, name)


def same_bits(a: float | None, b: float | None) -> bool:
    """Bitwise equality of two float32 values (nan equals nan with the same payload)."""
    if a is None or b is None:
        return False
    return struct.pack("<f", a) == struct.pack("<f", b)


SOURCE_WORDS = {"task": "seqstab task", "module": "module", "loop": "a loop's module"}


def report(path: Path, snapshot: dict[str, Any], result: dict[str, Any]) -> str:
    logged, versions = snapshot["logged"]["grad/norm_total"], snapshot.get("versions")
    seed = snapshot.get("seed")
    lines = [
        f"snapshot: {path}",
        f"update {snapshot['update']} (optimizer step {snapshot['global_step']}, epoch {snapshot['epoch']}), "
        f"seed {seed}, trained on {snapshot.get('device', '?')} with {snapshot.get('num_threads', '?')} threads",
        f"model: {snapshot['task_class']} ({SOURCE_WORDS[source_of(snapshot)]})",
        f"loss:                   replayed {result['loss']!r}   logged {snapshot['logged'].get('train/loss')!r}",
        f"pre-clip gradient norm: replayed {result['norm']!r}   logged {logged!r}   ({result['policy']})",
    ]
    if result.get("post_norm") is not None and snapshot["logged"].get("grad/norm_total_clipped") is not None:
        lines.append(
            f"post-clip norm:         replayed {result['post_norm']!r}   "
            f"logged {snapshot['logged']['grad/norm_total_clipped']!r}"
        )
    if same_bits(result["norm"], logged):
        lines.append("replayed norm == logged norm (bitwise)")
    else:
        lines.append(
            "replayed norm != logged norm: expected only across devices, thread counts or library versions "
            f"(run: torch {versions.get('torch') if isinstance(versions, dict) else '?'}, "
            f"now: torch {torch.__version__})"
        )
    norms = result["grad_norms"]
    total = sum(n * n for n in norms.values() if math.isfinite(n)) or 1.0
    width = max((len(name) for name in norms), default=10)
    lines.append("per-parameter gradient norms (pre-clip), largest first:")
    for name, n in sorted(norms.items(), key=lambda item: -item[1] if not math.isnan(item[1]) else -math.inf):
        share = f"{100 * n * n / total:6.2f}%" if math.isfinite(n) else "      "
        lines.append(f"  {name:<{width}}  {n:.6e}  {share}")
    if result.get("diagnosis"):
        lines.append("diagnosis (the flow recomputed from the chunk; the optimizer and data as the run measured them):")
        lines += diagnose.lines(result["diagnosis"])
    return "\n".join(lines)


@tool_main("replay")
def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        "replay",
        description="Recompute the gradient of the update an explosion guard snapshot captured.",
    )
    parser.add_argument("snapshot", type=Path, help="RUN_DIR/snapshot_update_<N>.pt")
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module (or package) whose classes the snapshot may name, e.g. your own net's; repeatable",
    )
    parser.add_argument(
        "--origin",
        action="store_true",
        help="also recompute the update with hooks on every module: where its first non-finite value appeared",
    )
    parser.add_argument(
        "--module",
        metavar="PKG.FUNC",
        help="a callable that builds the model (called with no arguments), for a snapshot whose module saved no "
        "plain hyperparameters or came from a loop of your own; naming it trusts its module",
    )
    parser.add_argument(
        "--loss",
        metavar="PKG.FUNC",
        help="the loss of a batch, called as FUNC(module, batch), for a snapshot of a loop of your own",
    )
    args = parser.parse(argv)
    if isinstance(args, int):  # a mistake (one line said it) or --help
        return args
    try:
        snapshot = load_snapshot(args.snapshot)
        result = replay(snapshot, args.trust, name=f"snapshot {args.snapshot}", module=args.module, loss=args.loss)
        where = _origin(snapshot, args.module, f"snapshot {args.snapshot}") if args.origin else []
    except SeqstabError as err:
        return error_line("replay", err)
    print("\n".join([report(args.snapshot, snapshot, result), *where]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
