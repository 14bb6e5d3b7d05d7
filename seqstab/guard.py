"""Explosion guard: the station after clipping that decides step | skip | stop."""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seqstab.tasks import SeqTask, Update


class Action(enum.Enum):
    STEP = "step"
    SKIP = "skip"
    STOP = "stop"


class ExplosionGuard:
    """Flags an update whose pre-clip norm is non-finite.

    Args:
        policy: What to do on a flagged update: ``warn`` (apply it anyway, unless non-finite), ``skip`` or ``stop``.
    """

    def __init__(self, policy: str = "skip"):
        self.policy = policy

    def check(self, task: SeqTask, update: Update) -> Action:
        norm = update.values["grad/norm_total"]
        if math.isfinite(norm):
            return Action.STEP
        return Action.STOP if self.policy == "stop" else Action.SKIP

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
