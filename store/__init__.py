"""The system of record: tables, engine, and the unit-of-work functions of the step protocol."""

from store._creating import RunRequest, create_run, create_runs
from store._dead_letter_actions import (
    ReplayOutcome,
    discard_dead_letters,
    plan_dead_letter_replay,
    replay_dead_letters,
    requeue_dead_letter,
)
from store._dead_letter_detail import dead_letter_detail
from store._dead_letters import (
    DeadLetterFilter,
    DeadLetterItem,
    dead_letter_groups,
    dead_letter_items,
)
from store._diff import RunDiff, diff_runs, divergence
from store._effects import effects_of_run, record_effect
from store._engine import Store
from store._errors import (
    InvalidState,
    LeaseLost,
    NotFound,
    StoreError,
    StoreUnavailable,
    WriterBusy,
)
from store._fork import Forked, fork_run
from store._history import resolve_step_id, step_input
from store._ids import derive_id, local_id
from store._ids import short as short_id
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
    Committed,
    CreatedRun,
    Eager,
    NewEvent,
    Preparer,
    Publish,
    Route,
    Router,
    StoredEvent,
)
from store._operations import (
    BULK_CANCEL,
    BULK_REPLAY,
    CANCEL,
    FORK,
    OPERATION_FAILED,
    OPERATION_INTERRUPTED,
    OPERATION_PARTIAL,
    OPERATION_RUNNING,
    OPERATION_SUCCEEDED,
    REPLAY,
    Operator,
    RunSelection,
    add_to_outcome,
    close_operation,
    count_runs,
    describe_runs,
    list_operations,
    open_operation,
    operation_detail,
    select_runs,
    statuses_of,
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
from store._reports import (
    LABELS,
    ExportFilter,
    LoopRecord,
    agent_stats,
    label_of,
    label_run,
    loops_for_export,
    model_exchanges,
)
from store._runs import cancel_run, fire_due_timers, replay_failed_steps, send_signal
from store._steps import (
    claim_step,
    commit_and_claim,
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
    "WriterBusy",
    "NotFound",
    "InvalidState",
    "LeaseLost",
    "upgrade",
    "derive_id",
    "local_id",
    "short_id",
    # records
    "Route",
    "Router",
    "Publish",
    "NewEvent",
    "StoredEvent",
    "Claim",
    "ClaimedStep",
    "CreatedRun",
    "Committed",
    "Eager",
    "Preparer",
    "Suspect",
    "RUN_FINISHED",
    # runs
    "create_run",
    "create_runs",
    "RunRequest",
    "send_signal",
    "fire_due_timers",
    "cancel_run",
    "replay_failed_steps",
    "Forked",
    "fork_run",
    "resolve_step_id",
    "step_input",
    # operations: what operators did, and the runs they act on in bulk
    "Operator",
    "REPLAY",
    "FORK",
    "CANCEL",
    "BULK_REPLAY",
    "BULK_CANCEL",
    "OPERATION_RUNNING",
    "OPERATION_SUCCEEDED",
    "OPERATION_PARTIAL",
    "OPERATION_FAILED",
    "OPERATION_INTERRUPTED",
    "open_operation",
    "close_operation",
    "add_to_outcome",
    "operation_detail",
    "list_operations",
    "RunSelection",
    "select_runs",
    "count_runs",
    "describe_runs",
    "statuses_of",
    # comparing runs
    "RunDiff",
    "diff_runs",
    "divergence",
    # the step protocol
    "claim_step",
    "commit_step",
    "commit_and_claim",
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
    # the dead-letter list
    "DeadLetterFilter",
    "DeadLetterItem",
    "ReplayOutcome",
    "dead_letter_groups",
    "dead_letter_items",
    "dead_letter_detail",
    "plan_dead_letter_replay",
    "replay_dead_letters",
    "requeue_dead_letter",
    "discard_dead_letters",
    # runs as data
    "LABELS",
    "ExportFilter",
    "LoopRecord",
    "label_run",
    "label_of",
    "loops_for_export",
    "model_exchanges",
    "agent_stats",
]
