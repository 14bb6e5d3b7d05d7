"""``python -m seqstab.replay RUN_DIR/snapshot_update_<N>.pt``: recompute the update the explosion guard flagged.

The snapshot (written by :class:`seqstab.guard.ExplosionGuard` at its first event) holds the model and optimizer
state, what was trained on, the hidden state it started from, the RNG state before its forward pass and the
clipping policy's settings. Replay rebuilds the model from its class path and hyperparameters (no data needed),
computes the loss as training did and runs it through the same update core (:class:`seqstab.update.UpdateCore`,
with the run's policy, stepping nothing), then prints the pre-clip gradient norm (in the policy's own norm), the
norm the run logged, whether the two are bitwise equal (on CPU, with the run's thread count, they are) and the
per-parameter breakdown.

* A snapshot of one of seqstab's tasks: the loss is ``SeqTask.chunk_loss`` of the chunk from its hidden state.
* A snapshot of another LightningModule (taken by the ``GradientStability`` callback): the module is rebuilt as
  ``cls(**hparams)`` (it must call ``save_hyperparameters()`` with plain values) and the loss is its
  ``training_step(batch, batch_idx)``. Not replayable: modules whose hyperparameters are not plain values, steps of
  gradient accumulation (the snapshot holds the last batch only), a ``training_step`` that reads the Trainer.

    python -m seqstab.replay runs/seqstab/version_0/snapshot_update_5.pt
    python -m seqstab.replay RUN_DIR/snapshot_update_3.pt --trust mynets     # a net of one's own, module mynets
    python -m seqstab.replay RUN_DIR/snapshot_update_0.pt --origin           # where a NaN came from

A snapshot is data, and replay runs no code it names: every class it names (the model, its net, the clipping
policy) must come from seqstab itself, from a module already imported, or from a module given with ``--trust``;
anything else is refused before it is imported (``python -m`` puts the working directory on ``sys.path``, so a
``.py`` file beside a snapshot would otherwise run).
"""

from __future__ import annotations

import math
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from seqstab.cli.console import ToolParser, error_line, tool_main
from seqstab.cli.origin import snapshot_origin
from seqstab.core import diagnose
from seqstab.core import io as checkpoint
from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.errors import ConfigError, DataError, SeqstabError
from seqstab.core.guard import SNAPSHOT_FORMAT, grad_norms
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
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
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


def check_trusted(snapshot: dict[str, Any], trust: list[str], what: str = "snapshot") -> None:
    """Refuse, before importing anything, a class path whose module is not seqstab's own, not imported yet and not
    given with ``--trust`` (``what``: the file, for the message; generate and score apply the same rule)."""
    names = [snapshot.get("task_class", ""), *class_paths(snapshot.get("hparams")), *class_paths(snapshot)]
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


def rebuild_model(snapshot: dict[str, Any], what: str = "snapshot") -> torch.nn.Module:
    """The model of the snapshot, built from its class path and hyperparameters, with its weights loaded (``what``:
    the file, for messages)."""
    from seqstab.data.module import as_spec  # (Lightning, imported only when a model is rebuilt)
    from seqstab.tasks import SeqTask

    class_path = snapshot["task_class"]
    hparams = snapshot.get("hparams")
    if not isinstance(hparams, dict):
        raise ConfigError(f"{what} model {class_path}: its hyperparameters are not plain values; cannot rebuild it")
    task = snapshot.get("kind", "task") == "task"
    base = SeqTask if task else _lightning_modules()
    cls = resolve(class_path, base, f"{what} model")
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}  # LightningCLI's _class_path, _instantiator
    try:
        if task:
            hparams["spec"] = as_spec(hparams.get("spec"))
        model = cls(**hparams)
    except TypeError as err:
        raise ConfigError(f"{what} model {class_path}: cannot rebuild it from its hyperparameters ({err})") from None
    model.load_state_dict(snapshot["state_dict"])
    return model


def _lightning_modules() -> tuple[type, ...]:
    """LightningModule of each namespace that is installed (a callback snapshot may come from either)."""
    import pytorch_lightning as pl

    kinds: list[type] = [pl.LightningModule]
    try:
        import lightning.pytorch as L

        kinds.append(L.LightningModule)
    except ImportError:
        pass
    return tuple(kinds)


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


def replay(snapshot: dict[str, Any], trust: list[str] = (), name: str = "snapshot") -> dict[str, Any]:
    """Recompute the snapshot's update: its loss, pre-clip global gradient norm, per-parameter norms, and (for a
    stateless policy) the post-clip norm. Classes come only from trusted modules (:func:`check_trusted`).

    Runs with the run's thread count and RNG state; the caller's thread count and RNG state are restored after.
    """
    check_trusted(snapshot, list(trust))
    check_complete(snapshot, name)
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            try:  # what a damaged snapshot breaks: its model, its RNG state, its chunk
                if snapshot.get("num_threads"):
                    torch.set_num_threads(int(snapshot["num_threads"]))  # CPU kernels' summation order follows it
                model = rebuild_model(snapshot)
                model.train()
                rng = snapshot.get("rng") or {}
                if "torch" in rng:
                    torch.set_rng_state(rng["torch"])  # the dropout masks of the original forward
                loss = _loss(model, snapshot)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
                if isinstance(err, SeqstabError):
                    raise
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise DataError(f"{name}: its update cannot be replayed ({type(err).__name__}: {first})") from None
            policy, stateless = rebuild_policy(snapshot)
            params = [p for p in model.parameters() if p.requires_grad]
            core, run = UpdateCore(policy), StaticRun(model)
            update = core.update(run, params, loss, backward=torch.Tensor.backward, step=_nothing, log=False)
            core.flush(run)
            why = "the model offers no recurrent layers to follow (seqstab.nets: recurrent contract)"
            net = getattr(model, "net", model)
            try:
                if "torch" in rng:
                    torch.set_rng_state(rng["torch"])
                profile = diagnose.flow_profile(net, lambda: _loss(model, snapshot))
            except Exception as err:  # the norm above is replay's answer; the diagnosis is a bonus
                profile, why = None, f"the flow could not be measured ({type(err).__name__}: {err})"
            remedies = diagnose.remedies_for(net, policy)  # the optimizer's and the data's: as the run stored them
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


def _loss(model: torch.nn.Module, snapshot: dict[str, Any]) -> torch.Tensor:
    """The training loss of the snapshot's update, computed as training computed it."""
    chunk = snapshot["chunk"]
    if snapshot.get("kind", "task") == "task":
        return model.chunk_loss(chunk, snapshot.get("hidden_in"))[0]
    with warnings.catch_warnings():  # self.log() without a Trainer: Lightning warns and does nothing
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        out = model.training_step(chunk, snapshot.get("batch_idx") or 0)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise ConfigError(f"snapshot model {snapshot['task_class']}: training_step returned no loss tensor")
    return loss


def _nothing() -> None:
    pass


def same_bits(a: float | None, b: float | None) -> bool:
    """Bitwise equality of two float32 values (nan equals nan with the same payload)."""
    if a is None or b is None:
        return False
    return struct.pack("<f", a) == struct.pack("<f", b)


def report(path: Path, snapshot: dict[str, Any], result: dict[str, Any]) -> str:
    logged, versions = snapshot["logged"]["grad/norm_total"], snapshot.get("versions")
    seed = snapshot.get("seed")
    lines = [
        f"snapshot: {path}",
        f"update {snapshot['update']} (optimizer step {snapshot['global_step']}, epoch {snapshot['epoch']}), "
        f"seed {seed}, trained on {snapshot.get('device', '?')} with {snapshot.get('num_threads', '?')} threads",
        f"model: {snapshot['task_class']} ({'seqstab task' if snapshot.get('kind', 'task') == 'task' else 'module'})",
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
    args = parser.parse(argv)
    if isinstance(args, int):  # a mistake (one line said it) or --help
        return args
    try:
        snapshot = load_snapshot(args.snapshot)
        result = replay(snapshot, args.trust, name=f"snapshot {args.snapshot}")
        where = snapshot_origin(snapshot, rebuild_model, f"snapshot {args.snapshot}") if args.origin else []
    except SeqstabError as err:
        return error_line("replay", err)
    print("\n".join([report(args.snapshot, snapshot, result), *where]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
