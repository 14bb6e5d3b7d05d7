"""What an event leaves behind, written at the flush that reads it: a line in ``explosions.jsonl``, a TensorBoard
text entry, the console summary (first event and a stop), the diagnosis and, for the first event, the replay
snapshot."""

from __future__ import annotations

import json
from typing import Any

from seqstab.core import diagnose as diagnose_module
from seqstab.core.diagnose.recompute import event_origin, with_origin
from seqstab.core.diagnose.remedies import in_force, library_of
from seqstab.core.diagnose.tracker import inputs_named
from seqstab.core.guard.moments import moment_buffers
from seqstab.core.guard.snapshot import save_snapshot
from seqstab.core.guard.weights import grad_norms
from seqstab.core.logs import add_text
from seqstab.core.plain import json_safe, sortable
from seqstab.core.record import Action, Run, Update

EVENTS_FILE = "explosions.jsonl"


def record_event(guard: Any, run: Run, update: Update, reason: str, read: dict[str, Any], action: Action):
    """Write everything ``update``'s event leaves (``guard``: the :class:`ExplosionGuard` settling it; ``read``: its
    verdict read back, and what the host knew at the update)."""
    norm, median = update.values["grad/norm_total"], read.get("median")
    named = _with_grad(run, read.get("with_grad"))
    modules = grad_norms(run.module, update.clip.tensor_norms, named)  # pre-clip; one read, at an event's flush
    largest = max(modules, key=lambda name: sortable(modules[name])) if modules else None
    event = {
        "update": update.step,
        "global_step": read.get("global_step", run.global_step),
        "epoch": read.get("epoch", run.epoch),
        "reason": reason,
        "action": action.value,
        "norm": json_safe(norm),
        "median": json_safe(median),
        "ratio": json_safe(norm / median if median else None),
        "loss": json_safe(update.values.get("train/loss")),
        "module": largest,
        "module_norm": json_safe(modules.get(largest)) if largest else None,
    }
    reset = read.get("reset")
    if reset is not None:
        spiked = [(name, p) for (name, p), flag in zip(named, reset, strict=False) if flag]
        event["spiked"] = [name for name, _ in spiked]
        event["reset"] = [name for name, p in spiked if moment_buffers(run.optimizer, p)]
    first = guard.first_event is None
    copy = guard._copy if first and guard.snapshot and guard.snapshot_path is None else None
    if guard._tracker is not None and run.is_global_zero:
        event["diagnosis"] = _diagnosis(guard, run, update, copy, reason)
    run_dir = run.run_dir if run.is_global_zero else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    if first:
        guard.first_event = update.step
        if copy is not None and run_dir is not None:
            path = run_dir / f"snapshot_update_{update.step}.pt"
            state = copy.state(update.step)
            rng = guard.snapshot_rng(update.step)
            flags = save_snapshot(path, run, update, modules, rng, event.get("diagnosis"), state)
            guard.snapshot_path = str(path)
            guard.snapshot_flags = flags
            event["snapshot"] = path.name
        if copy is not None:
            copy.release()
    if run_dir is not None:
        with open(run_dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps(event) + "\n")
    if run.is_global_zero:
        add_text(run, "explosion/event", event_markdown(event), update.step)
        if first or action is Action.STOP:
            print(summary(guard, event, action), flush=True)
            if "diagnosis" in event:
                print("\n".join(f"seqstab: {line}" for line in diagnose_module.lines(event["diagnosis"])), flush=True)


def _with_grad(run: Run, params: list[Any] | None) -> list[tuple[str, Any]]:
    """``(name, parameter)`` of the parameters that had a gradient at the update (in the clip's order)."""
    if params is None:
        return [(name, p) for name, p in run.module.named_parameters() if p.grad is not None]
    had = {id(p) for p in params}
    return [(name, p) for name, p in run.module.named_parameters() if id(p) in had]


def _diagnosis(guard: Any, run: Run, update: Update, copy: Any, reason: str) -> dict[str, Any]:
    """The event's diagnosis, its flow (and a non-finite event's origin) measured on the weights the update was
    flagged with where the guard kept them (the first event of a guard with ``snapshot``), else on the weights at
    this flush; its remedies in the words of the run's door, none already in force; its data evidence naming the
    inputs it measured."""
    held = copy.load_into(run.module) if copy is not None and copy.holds() else None
    try:
        with in_force(**_in_force(guard, run, update)):
            diagnosis = diagnose_module.diagnose_event(run, update, guard._tracker)
        origin = event_origin(run, update, reason, guard.snapshot_rng(update.step))
        diagnosis = with_origin(diagnosis, origin)
    finally:
        if held is not None:
            run.module.load_state_dict(held, strict=False)
    found = inputs_named(update.chunk)
    for finding in diagnosis["ranked"]:
        if finding["mechanism"] == "data" and found is not None and finding["score"] is not None:
            finding["evidence"] += f" (measured: {found[0]})"
    return diagnosis


def _in_force(guard: Any, run: Run, update: Update) -> dict[str, Any]:
    """The door the run came in by (``cli`` for seqstab's tasks, ``callback``, ``loop`` for a run with no recipe),
    the library of its module, the guard's policy and whether the run clips (its recorded policy; a loop's: whether
    its policy logged a threshold or clipped this update)."""
    recipe = run.recipe or {}
    source = recipe.get("source") or recipe.get("kind") or "loop"
    policy = recipe.get("clipping")
    if isinstance(policy, dict) and isinstance(policy.get("class_path"), str):
        clipped = not policy["class_path"].endswith(".NoClip")
    else:
        clipped = "grad/clip_threshold" in update.values or bool(update.values.get("grad/clipped"))
    return {
        "door": {"task": "cli", "module": "callback"}.get(source, "loop"),
        "library": library_of(run.module),
        "guard_policy": guard.policy,
        "clipped": clipped,
    }


def summary(guard: Any, event: dict[str, Any], action: Action) -> str:
    """The event's one console line."""
    what = {Action.STEP: "applied (policy warn)", Action.SKIP: "not applied", Action.STOP: "stopping the run"}
    ratio = ""
    if isinstance(event["ratio"], float):
        ratio = f" = {event['ratio']:.3g}x the median {event['median']:.3g}"
    norm = event["norm"] if isinstance(event["norm"], str) else f"{event['norm']:.4g}"
    line = (
        f"seqstab: explosion guard: {event['reason']} at update {event['update']} (epoch {event['epoch']}): "
        f"pre-clip grad norm {norm}{ratio}; largest in {event['module']}; {what[action]}; "
    )
    if "reset" in event:
        line += f"moments reset for {', '.join(event['reset']) or 'no tensor (the optimizer keeps none)'}; "
    line += f"{guard.events} event(s) so far"
    if guard.snapshot_path:
        line += f"; replay: python -m seqstab.replay {guard.snapshot_path}{getattr(guard, 'snapshot_flags', '')}"
    return line


def event_markdown(event: dict[str, Any]) -> str:
    text = " | ".join(f"**{k}**: {v}" for k, v in event.items() if k != "diagnosis")
    if "diagnosis" in event:
        text += "\n\n" + diagnose_module.markdown(event["diagnosis"])
    return text
