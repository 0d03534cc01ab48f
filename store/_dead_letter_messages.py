"""What a dead-lettered message holds: its bytes, the step pointer in them if any, and a short
type for its reason (a failed step's error type is its exception's name)."""

from __future__ import annotations

import json
from typing import Any

_RAW_SHOWN = 1024


def error_type_of(reason: str) -> str:
    """A dead letter's reason as a short type, as the runtime words its reasons."""
    if reason.startswith("undecodable message"):
        return "UndecodableMessage"
    if "malformed arguments" in reason:
        return "MalformedArguments"
    if reason.startswith(("nacked: no actor", "no actor")):
        return "UnknownActor"
    if reason.startswith("no step"):
        return "UnknownStep"
    return "DeadLetter"


def decode_pointer(raw: bytes) -> tuple[dict[str, str] | None, str]:
    """The step pointer a message's bytes carry, or None and why there is none."""
    fields = _fields(raw)
    if fields is None:
        return None, "the bytes are not a JSON message; nothing can be replayed from them"
    args = fields.get("args")
    if (
        fields.get("kwargs")
        or not isinstance(args, list)
        or len(args) != 3
        or not all(isinstance(a, str) for a in args)
    ):
        return None, f"its arguments {args!r} are not (step id, run id, trace context)"
    return {
        "queue": str(fields.get("queue_name") or ""),
        "actor": str(fields.get("actor_name") or ""),
        "step_id": args[0],
        "run_id": args[1],
        "traceparent": args[2],
    }, ""


def actor_named_in(raw: bytes) -> str | None:
    """The actor a message was addressed to, when its bytes are a message at all."""
    fields = _fields(raw)
    actor = None if fields is None else fields.get("actor_name")
    return actor if isinstance(actor, str) and actor else None


def shown_bytes(raw: bytes) -> str:
    """The bytes as Python's repr, cut after the first KiB."""
    shown = repr(raw[:_RAW_SHOWN])
    if len(raw) > _RAW_SHOWN:
        shown += f" ... ({len(raw) - _RAW_SHOWN:,} more bytes)"
    return shown


def _fields(raw: bytes) -> dict[str, Any] | None:
    try:
        fields = json.loads(raw)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None
