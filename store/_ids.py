"""Deterministic ids: an id derives from its cause, so retries and replays address the same rows."""

from __future__ import annotations

import hashlib
import os
import time


def derive_id(*parts: str | int) -> str:
    """32 hex characters derived from ``parts``; the same parts always give the same id."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


def event_id(cause_step_id: str, position: int) -> str:
    return derive_id("event", cause_step_id, position)


def trigger_event_id(run_id: str) -> str:
    return derive_id("trigger", run_id)


def step_id(event_id: str, actor: str) -> str:
    return derive_id("step", event_id, actor)


def join_step_id(group_id: str, actor: str) -> str:
    return derive_id("join", group_id, actor)


def wait_id(step_id: str, name: str) -> str:
    return derive_id("wait", step_id, name)


def new_run_id(now: float | None = None) -> str:
    """Time-sortable: 12 hex digits of milliseconds, then 20 random ones."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{os.urandom(10).hex()}"


def new_message_id() -> str:
    """Time-sortable like a run id, so the outbox's key index grows at its end instead of
    dirtying a random page per message (fewer WAL pages per commit)."""
    return new_run_id()


def new_trace_id() -> str:
    return os.urandom(16).hex()


def span_id(step_id: str) -> str:
    """A step's span id: 16 hex digits of its id (W3C requires non-zero; blake2b makes 0 moot)."""
    return step_id[:16]


def attempt_span_id(step_id: str, attempt: int) -> str:
    """The span id of one attempt of a step: the first is ``span_id(step_id)``, so the usual
    single attempt lines up with its children; a retry or replay gets its own, also derived."""
    return span_id(step_id) if attempt <= 1 else derive_id("span", step_id, attempt)[:16]


def traceparent(trace_id: str, parent_span_id: str) -> str:
    return f"00-{trace_id}-{parent_span_id}-01"
