"""``python -m seqstab.replay SNAPSHOT --origin``: where the snapshot's update first went non-finite.

The snapshot's model is rebuilt as replay rebuilds it and its update recomputed once more, with hooks on every module
(:func:`seqstab.core.diagnose.find_origin`): forward or backward, which module, which step of a recurrent layer, which
rows, the largest finite magnitude before and what made it. A finite update says so ("not reproduced").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from seqstab.core.diagnose import find_origin, origin_lines
from seqstab.core.diagnose.recompute import training_step_loss
from seqstab.core.errors import DataError, SeqstabError
from seqstab.core.monitor import flow_layers

__all__ = ["snapshot_origin"]


def snapshot_origin(
    snapshot: dict[str, Any], rebuild_model: Callable[[dict[str, Any]], torch.nn.Module], name: str = "snapshot"
) -> list[str]:
    """The origin of the snapshot's update as report lines (its classes already checked by replay's ``--trust``;
    ``rebuild_model``: replay's, which builds the snapshot's model with its weights)."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            if snapshot.get("num_threads"):
                torch.set_num_threads(int(snapshot["num_threads"]))
            model = rebuild_model(snapshot)
            model.train()
            rng = snapshot.get("rng") or {}
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])  # the dropout masks of the original forward
            chunk = snapshot["chunk"]
            if snapshot.get("kind", "task") == "task":

                def loss_fn() -> torch.Tensor:
                    return model.chunk_loss(chunk, snapshot.get("hidden_in"))[0]

            else:

                def loss_fn() -> torch.Tensor:
                    return training_step_loss(model, chunk, snapshot.get("batch_idx") or 0)

            origin = find_origin(model, loss_fn, flow_layers(getattr(model, "net", model)), chunk)
    except SeqstabError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"{name}: its update cannot be recomputed ({type(err).__name__}: {first})") from None
    finally:
        torch.set_num_threads(threads)
    return ["origin (the update recomputed with hooks on every module):", *origin_lines(origin)]
