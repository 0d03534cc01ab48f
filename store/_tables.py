"""The tables of the system of record.

Times are UNIX seconds as floats: one representation for SQLite and PostgreSQL, cheap to
compare in the hot claim/commit path. Every hot query has a composite index named here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class RunBase(SQLModel):
    id: str = Field(primary_key=True, max_length=40)
    status: str = Field(max_length=16)
    trigger_type: str = Field(max_length=200)
    trigger_event_id: str = Field(max_length=40)
    agent: str | None = Field(default=None, max_length=200)
    parent_run_id: str | None = Field(default=None, max_length=40)
    # A fork: the step of the parent run it re-executes from; recorded forks reuse the
    # parent's model and tool results wherever the request is unchanged.
    forked_from_step_id: str | None = Field(default=None, max_length=40)
    recorded: bool = False
    dedupe_key: str | None = Field(default=None, max_length=300)
    trace_id: str = Field(max_length=32)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float
    updated_at: float
    finished_at: float | None = None
    # Committed usage totals, read before every model call to enforce budgets in O(1).
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0


class Run(RunBase, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_created", "status", "created_at"),
        Index("ix_runs_created", "created_at"),
        Index("ix_runs_agent_created", "agent", "created_at"),
        UniqueConstraint("dedupe_key", name="uq_runs_dedupe_key"),
    )


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_run_created", "run_id", "created_at"),
        Index("ix_events_cause", "cause_step_id", "position"),
    )

    id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    type: str = Field(max_length=200)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    cause_step_id: str | None = Field(default=None, max_length=40)
    position: int = 0
    # The stack of fan-out groups this event belongs to, innermost last: [[group_id, size], ...].
    groups: list[list[Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float


class Step(SQLModel, table=True):
    __tablename__ = "steps"
    __table_args__ = (
        Index("ix_steps_run_state", "run_id", "state"),
        Index("ix_steps_state_lease", "state", "lease_expires_at"),
        Index("ix_steps_state_available", "state", "available_at"),
        Index("ix_steps_event", "event_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    event_id: str = Field(max_length=40)
    actor: str = Field(max_length=200)
    queue: str = Field(max_length=100)
    state: str = Field(max_length=16)
    attempts: int = 0
    # Attempts made before the last in-place replay: retries are counted from here.
    attempt_base: int = 0
    max_retries: int = 0
    available_at: float
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_expires_at: float | None = None
    message_id: str | None = Field(default=None, max_length=40)
    published_at: float | None = None
    traceparent: str = Field(max_length=60)
    join_expected: int | None = None
    join_arrived: int = 0
    error_type: str | None = Field(default=None, max_length=200)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    # An operator took this failure off the dead-letter list; a later failure shows again.
    discarded_at: float | None = None
    # In a fork: the parent run's step at the same causal position (its recordings are reused).
    origin_step_id: str | None = Field(default=None, max_length=40)


class StepAttempt(SQLModel, table=True):
    __tablename__ = "step_attempts"

    step_id: str = Field(primary_key=True, max_length=40)
    attempt: int = Field(primary_key=True)
    run_id: str = Field(max_length=40)
    worker: str = Field(max_length=100)
    started_at: float
    ended_at: float | None = None
    outcome: str | None = Field(default=None, max_length=16)
    error_type: str | None = Field(default=None, max_length=200)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    traceback: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class JoinArrival(SQLModel, table=True):
    __tablename__ = "join_arrivals"

    step_id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(primary_key=True, max_length=40)
    position: int = 0


class Outbox(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_created", "created_at"),
        Index("ix_outbox_step", "step_id"),
    )

    message_id: str = Field(primary_key=True, max_length=40)
    step_id: str = Field(max_length=40)
    run_id: str = Field(max_length=40)
    actor: str = Field(max_length=200)
    queue: str = Field(max_length=100)
    traceparent: str = Field(max_length=60)
    delay_ms: int = 0
    created_at: float


class Wait(SQLModel, table=True):
    __tablename__ = "waits"
    __table_args__ = (
        Index("ix_waits_run_state", "run_id", "state"),
        Index("ix_waits_state_deadline", "state", "deadline"),
    )

    id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    step_id: str = Field(max_length=40)
    name: str = Field(max_length=200)
    state: str = Field(max_length=16)
    deadline: float | None = None
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: float
    resolved_at: float | None = None


class Memory(SQLModel, table=True):
    """Run memory as versions: a write appends, a read takes the newest through the index."""

    __tablename__ = "memory"
    __table_args__ = (Index("ix_memory_run_key_id", "run_id", "key", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    key: str = Field(max_length=200)
    value: Any = Field(sa_column=Column(JSON, nullable=True))
    step_id: str | None = Field(default=None, max_length=40)
    created_at: float


class DeadLetter(SQLModel, table=True):
    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_created", "created_at"),
        Index("ix_dead_letters_discarded_created", "discarded_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    queue: str = Field(max_length=100)
    actor: str | None = Field(default=None, max_length=200)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    run_id: str | None = Field(default=None, max_length=40)
    step_id: str | None = Field(default=None, max_length=40)
    created_at: float
    # Taken off the dead-letter list (discarded or re-published); the row stays.
    discarded_at: float | None = None


class Delivery(SQLModel, table=True):
    """A webhook delivery seen by the gateway: dedupe on (source, delivery id)."""

    __tablename__ = "deliveries"

    source: str = Field(primary_key=True, max_length=100)
    delivery_id: str = Field(primary_key=True, max_length=200)
    event_type: str = Field(max_length=200)
    status: str = Field(max_length=16)
    run_id: str | None = Field(default=None, max_length=40)
    created_at: float


runs = Run.__table__  # type: ignore[attr-defined]
events = Event.__table__  # type: ignore[attr-defined]
steps = Step.__table__  # type: ignore[attr-defined]
step_attempts = StepAttempt.__table__  # type: ignore[attr-defined]
join_arrivals = JoinArrival.__table__  # type: ignore[attr-defined]
outbox = Outbox.__table__  # type: ignore[attr-defined]
waits = Wait.__table__  # type: ignore[attr-defined]
memory = Memory.__table__  # type: ignore[attr-defined]
dead_letters = DeadLetter.__table__  # type: ignore[attr-defined]
deliveries = Delivery.__table__  # type: ignore[attr-defined]


class ActorRecord(SQLModel, table=True):
    """What workers have declared: lets the CLI and the gateway find an event type's module."""

    __tablename__ = "actor_catalog"

    name: str = Field(primary_key=True, max_length=200)
    module: str = Field(max_length=300)
    queue: str = Field(max_length=100)
    event_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    join: bool = False
    updated_at: float


actor_catalog = ActorRecord.__table__  # type: ignore[attr-defined]


class AgentLoop(SQLModel, table=True):
    """One agent's loop inside a run: its totals and, once finished, its output."""

    __tablename__ = "agent_loops"
    __table_args__ = (Index("ix_agent_loops_run", "run_id"),)

    id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    agent: str = Field(max_length=200)
    model: str = Field(max_length=200)
    parent_loop_id: str | None = Field(default=None, max_length=40)
    parent_call_id: str | None = Field(default=None, max_length=100)
    status: str = Field(max_length=16)
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    output: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: float
    finished_at: float | None = None


class Message(SQLModel, table=True):
    """The conversation: one row per message, appended at a known position, never rewritten."""

    __tablename__ = "conversation"
    __table_args__ = (UniqueConstraint("loop_id", "seq", name="uq_conversation_loop_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    loop_id: str = Field(max_length=40)
    seq: int
    run_id: str = Field(max_length=40)
    role: str = Field(max_length=16)
    content: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    tool_calls: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    tool_call_id: str | None = Field(default=None, max_length=100)
    name: str | None = Field(default=None, max_length=200)
    step_id: str | None = Field(default=None, max_length=40)
    created_at: float


class ModelCall(SQLModel, table=True):
    """A model response, recorded with the step that asked for it: replay reuses it."""

    __tablename__ = "model_calls"
    __table_args__ = (Index("ix_model_calls_run", "run_id", "created_at"),)

    step_id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    loop_id: str = Field(max_length=40)
    agent: str = Field(max_length=200)
    model: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    request: Any = Field(sa_column=Column(JSON, nullable=False))
    response: Any = Field(sa_column=Column(JSON, nullable=False))
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempt: int = 1
    committed: bool = False
    created_at: float


class ToolCall(SQLModel, table=True):
    """A tool call: the intent is written before calling out, the result with the step."""

    __tablename__ = "tool_calls"
    __table_args__ = (Index("ix_tool_calls_run", "run_id", "created_at"),)

    step_id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    loop_id: str = Field(max_length=40)
    call_id: str = Field(max_length=100)
    tool: str = Field(max_length=200)
    arguments: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    state: str = Field(max_length=16)  # intent | done
    attempt: int = 1
    result: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: float
    finished_at: float | None = None


class AgentFact(SQLModel, table=True):
    """Long-term memory of an agent across runs (remember / recall)."""

    __tablename__ = "agent_memory"

    agent: str = Field(primary_key=True, max_length=200)
    key: str = Field(primary_key=True, max_length=200)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float


class Document(SQLModel, table=True):
    """A document loaded by `baton docs add`, searched by the search_documents tool."""

    __tablename__ = "documents"

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(max_length=500, unique=True)
    title: str = Field(max_length=500)
    content: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float


class Effect(SQLModel, table=True):
    """An outside effect keyed by idempotency key (the demo's stand-in for GitHub's API)."""

    __tablename__ = "effects"
    __table_args__ = (Index("ix_effects_run", "run_id"),)

    idempotency_key: str = Field(primary_key=True, max_length=100)
    run_id: str | None = Field(default=None, max_length=40)
    kind: str = Field(max_length=100)
    target: str = Field(max_length=300)
    payload: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: float


agent_loops = AgentLoop.__table__  # type: ignore[attr-defined]
conversation = Message.__table__  # type: ignore[attr-defined]
model_calls = ModelCall.__table__  # type: ignore[attr-defined]
tool_calls = ToolCall.__table__  # type: ignore[attr-defined]
agent_memory = AgentFact.__table__  # type: ignore[attr-defined]
documents = Document.__table__  # type: ignore[attr-defined]
effects = Effect.__table__  # type: ignore[attr-defined]


class Operation(SQLModel, table=True):
    """What an operator did (replay, fork, cancel, ...): who, when, why, and how it went."""

    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_created", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=40)
    actor: str = Field(max_length=200)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    parameters: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    status: str = Field(max_length=16)
    outcome: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: float
    finished_at: float | None = None


class RunLabel(SQLModel, table=True):
    """An outcome an operator recorded for a run: good or bad, with a note."""

    __tablename__ = "run_labels"

    run_id: str = Field(primary_key=True, max_length=40)
    label: str = Field(max_length=16)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float


operations = Operation.__table__  # type: ignore[attr-defined]
run_labels = RunLabel.__table__  # type: ignore[attr-defined]
