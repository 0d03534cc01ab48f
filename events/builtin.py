"""The built-in events: run lifecycle and signals."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from events._event import Event


class RunSucceeded(Event, type="baton.run.succeeded"):
    """Appended when nothing is pending, running or waiting in a run any more."""


class RunFailed(Event, type="baton.run.failed"):
    """Appended when a step fails for good."""

    step_id: str
    actor: str
    error_type: str
    message: str


class RunCanceled(Event, type="baton.run.canceled"):
    """Appended when an operator cancels a run."""

    reason: str
    # The operation that did it (`operations` table) and who asked.
    operation: str | None = None
    by: str | None = None


class RunReplayed(Event, type="baton.run.replayed"):
    """Appended when an operator replays a run's failed steps in place."""

    reason: str
    steps: list[str]
    operation: str | None = None
    by: str | None = None


class RunForked(Event, type="baton.run.forked"):
    """The first entry of a fork: the run and step it re-executes from, and why."""

    reason: str
    parent_run_id: str
    from_step_id: str
    recorded: bool = False
    edited: bool = False
    operation: str | None = None
    by: str | None = None


class Signal(Event, type="baton.signal"):
    """A named signal delivered to a run from outside (approval, callback) or by a timer."""

    name: str
    data: dict[str, Any] = Field(default_factory=dict)
    timed_out: bool = False
