"""The system of record: tables, engine, and the unit-of-work functions of the step protocol."""

from store._effects import effects_of_run, record_effect
from store._engine import Store
from store._errors import InvalidState, LeaseLost, NotFound, StoreError, StoreUnavailable
from store._ids import derive_id
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
from store._queries import (
    RunFilter,
    conversation_of,
    known_modules,
    list_runs,
    modules_for_event_type,
    record_actors,
    resolve_run_id,
    run_detail,
    run_status,
    tool_calls_of,
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
    # the engine and its errors
    "Store",
    "StoreError",
    "StoreUnavailable",
    "NotFound",
    "InvalidState",
    "LeaseLost",
    "upgrade",
    "derive_id",
    # records
    "Route",
    "Router",
    "Publish",
    "NewEvent",
    "StoredEvent",
    "Claim",
    "ClaimedStep",
    "CreatedRun",
    "Suspect",
    "RUN_FINISHED",
    # runs
    "create_run",
    "send_signal",
    "fire_due_timers",
    "cancel_run",
    "replay_failed_steps",
    # the step protocol
    "claim_step",
    "commit_step",
    "fail_step",
    "park_step",
    "read_memory",
    "read_wait",
    "renew_leases",
    # relay and reconciler
    "due_outbox",
    "confirm_published",
    "reissue",
    "suspects",
    "mark_seen",
    "record_dead_letter",
    # effects on the outside world
    "effects_of_run",
    "record_effect",
    # reads for operators
    "RunFilter",
    "list_runs",
    "resolve_run_id",
    "run_detail",
    "run_status",
    "conversation_of",
    "tool_calls_of",
    "record_actors",
    "modules_for_event_type",
    "known_modules",
]
