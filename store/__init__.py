"""The system of record: tables, engine, and the unit-of-work functions of the step protocol."""

from store._engine import Store
from store._errors import InvalidState, LeaseLost, NotFound, StoreError, StoreUnavailable
from store._maintenance import (
    Suspect,
    confirm_published,
    due_outbox,
    mark_seen,
    record_dead_letter,
    reissue,
    suspects,
)
from store._migrate import upgrade
from store._model import (
    RUN_FINISHED,
    Claim,
    ClaimedStep,
    CreatedRun,
    NewEvent,
    Publish,
    Route,
    Router,
    StoredEvent,
)
from store._runs import cancel_run, create_run, fire_due_timers, replay_failed_steps, send_signal
from store._steps import (
    claim_step,
    commit_step,
    fail_step,
    park_step,
    read_memory,
    read_wait,
    renew_leases,
)

__all__ = [
    "RUN_FINISHED",
    "Claim",
    "ClaimedStep",
    "CreatedRun",
    "InvalidState",
    "LeaseLost",
    "NewEvent",
    "NotFound",
    "Publish",
    "Route",
    "Router",
    # the engine and its errors
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredEvent",
    "Suspect",
    "cancel_run",
    # the step protocol
    "claim_step",
    "commit_step",
    "confirm_published",
    # runs
    "create_run",
    # maintenance
    "due_outbox",
    "fail_step",
    "fire_due_timers",
    "mark_seen",
    "park_step",
    "read_memory",
    "read_wait",
    "record_dead_letter",
    "reissue",
    "renew_leases",
    "replay_failed_steps",
    "send_signal",
    "suspects",
    "upgrade",
]
