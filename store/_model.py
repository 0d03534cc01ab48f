"""Plain records the unit-of-work functions take and return (no ORM state crosses a boundary)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

RUN_RUNNING = "running"
RUN_WAITING = "waiting"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_CANCELED = "canceled"
RUN_FINISHED = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELED})

STEP_PENDING = "pending"
STEP_RUNNING = "running"
STEP_WAITING = "waiting"
STEP_COLLECTING = "collecting"
STEP_SUCCEEDED = "succeeded"
STEP_FAILED = "failed"
STEP_CANCELED = "canceled"
STEP_OPEN = (STEP_PENDING, STEP_RUNNING, STEP_WAITING, STEP_COLLECTING)


@dataclass(frozen=True)
class Route:
    """One actor subscribed to an event type, as the store needs to know it."""

    actor: str
    queue: str
    max_retries: int
    join: bool = False


Router = Callable[[str], Sequence[Route]]


@dataclass(frozen=True)
class Publish:
    """A message to hand to the broker after the transaction that caused it has committed."""

    message_id: str
    step_id: str
    run_id: str
    actor: str
    queue: str
    traceparent: str
    delay_ms: int = 0


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    id: str
    run_id: str
    type: str
    data: dict[str, Any]
    groups: list[list[Any]]
    position: int = 0


@dataclass(frozen=True)
class ClaimedStep:
    """A step this worker now holds the lease of, with what its handler needs."""

    id: str
    run_id: str
    actor: str
    attempt: int
    attempts_left: int
    # Attempts made before the last in-place replay (0 if never replayed).
    attempt_base: int
    traceparent: str
    trace_id: str
    event: StoredEvent
    # For a join step: every arrival, in group order; otherwise just ``event``.
    events: list[StoredEvent] = field(default_factory=list)
    join: bool = False
    # In a fork: the parent run's step at this causal position; ``recorded`` when the fork
    # reuses the parent's model responses and tool results for unchanged requests.
    origin_step_id: str | None = None
    recorded: bool = False
    # When the step became ready to run (its queue lag is the claim time minus this).
    available_at: float = 0.0
    # What the actor's preparer read in the transaction that claimed the step (``Preparer``).
    prepared: Any = None


# Reads what a step's handler needs, inside the transaction that claims the step: no
# transaction, and no thread hop, of its own before the handler runs.
Preparer = Callable[["Connection", ClaimedStep], Any]


def _prepares_nothing(actor: str) -> Preparer | None:
    return None


@dataclass(frozen=True)
class Eager:
    """Which of the steps a commit makes ready its worker takes on the spot.

    ``takes(actor)`` is asked once per ready step, inside the transaction; a step it takes is
    written already claimed by ``owner`` (attempt 1, a lease of ``lease_seconds``) and gets no
    message: its worker runs it next. If the worker dies, the lease runs out and the
    reconciler sends the step to another, as for any claimed step.
    """

    owner: str
    lease_seconds: float
    takes: Callable[[str], bool]
    # The preparer of an actor's steps, run once the transaction has written everything else.
    preparer: Callable[[str], Preparer | None] = _prepares_nothing


@dataclass(frozen=True)
class Committed:
    """What a commit caused: messages to send after it, and steps its worker took (``Eager``)."""

    publish: list[Publish]
    claimed: list[ClaimedStep] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """What a delivery found: ``claimed`` (run it) or why not."""

    outcome: str  # claimed | succeeded | busy | finished | canceled | halted | missing | early
    step: ClaimedStep | None = None
    detail: str = ""
    # For a redelivered, already-succeeded step: what it caused and is still pending.
    republish: list[Publish] = field(default_factory=list)
    available_in_ms: int = 0


@dataclass(frozen=True)
class CreatedRun:
    run_id: str
    created: bool
    publish: list[Publish]
    subscribed: bool
