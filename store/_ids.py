"""Deterministic ids: an id derives from its cause, so retries and replays address the same rows.

Run ids begin with their creation time, and the ids of a run's events, steps and agent loops
begin with the same 12 characters (``local_id``): the rows of one run sort together, and a new
run's rows land at the end of every index on an id instead of on a random page of it. With
random ids each commit dirtied a page per row in each such index, all of them written to
SQLite's WAL: in a store of 20,000 runs, creating runs took 2.5 times as long. Listings show
an id's last characters, which differ within a run; commands take either end.
"""

from __future__ import annotations

import hashlib
import os
import string
import time
from typing import Any

from sqlalchemy import or_


def derive_id(*parts: str | int) -> str:
    """32 hex characters derived from ``parts``; the same parts always give the same id."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


# Characters of a run's id (its creation time, in milliseconds) that its rows' ids share.
SHARED = 12


def local_id(anchor: str, *parts: str | int) -> str:
    """32 hex characters: the first ``SHARED`` of ``anchor`` (an id of the same run), then 20
    derived from ``parts``."""
    return anchor[:SHARED] + derive_id(*parts)[: 32 - SHARED]


def event_id(cause_step_id: str, position: int) -> str:
    return local_id(cause_step_id, "event", cause_step_id, position)


def trigger_event_id(run_id: str) -> str:
    return local_id(run_id, "trigger", run_id)


def step_id(event_id: str, actor: str) -> str:
    return local_id(event_id, "step", event_id, actor)


def legacy_event_id(cause_step_id: str, position: int) -> str:
    """An event's id as written before ids began with their run's time: a recorded fork of
    a run from then finds the parent's rows by these."""
    return derive_id("event", cause_step_id, position)


def legacy_step_id(event_id: str, actor: str) -> str:
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
    """A step's span id: the last 16 hex digits of its id, the ones no other step of the run
    shares (W3C requires non-zero; blake2b makes 0 moot)."""
    return step_id[-16:]


def attempt_span_id(step_id: str, attempt: int) -> str:
    """The span id of one attempt of a step: the first is ``span_id(step_id)``, so the usual
    single attempt lines up with its children; a retry or replay gets its own, also derived."""
    return span_id(step_id) if attempt <= 1 else derive_id("span", step_id, attempt)[:16]


def traceparent(trace_id: str, parent_span_id: str) -> str:
    return f"00-{trace_id}-{parent_span_id}-01"


# Characters of an id that listings show, and that commands take instead of the whole id.
SHORT = 12
# A shorter part of an id is not taken for one: too many ids would share it.
FEWEST = 6


def short(identifier: str) -> str:
    """An id as listings show it: its last characters, which differ between one run's rows."""
    return identifier[-SHORT:] if len(identifier) == 32 else identifier


def matching(column: Any, text: str) -> Any:
    """A condition on an id ``column``: equal to ``text``, or (``FEWEST`` characters or more)
    beginning or ending with it. Ids are lower-case hex, and so is what is asked for: SQLite
    compares ``LIKE`` without case, PostgreSQL with."""
    if text and all(character in string.hexdigits for character in text):
        text = text.lower()
    if len(text) < FEWEST:
        return column == text
    return or_(
        column == text,
        column.startswith(text, autoescape=True),
        column.endswith(text, autoescape=True),
    )
