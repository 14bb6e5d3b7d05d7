"""What an event leaves in ``explosions.jsonl`` and TensorBoard's text: the file's name and an event as markdown."""

from __future__ import annotations

from typing import Any

from seqstab.core import diagnose as diagnose_module

EVENTS_FILE = "explosions.jsonl"


def event_markdown(event: dict[str, Any]) -> str:
    text = " | ".join(f"**{k}**: {v}" for k, v in event.items() if k != "diagnosis")
    if "diagnosis" in event:
        text += "\n\n" + diagnose_module.markdown(event["diagnosis"])
    return text
