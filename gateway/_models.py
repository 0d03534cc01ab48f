"""The shapes the HTTP API takes and returns: one pydantic model each, for OpenAPI too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RunStatus = Literal["running", "waiting", "succeeded", "failed", "canceled"]


class _Row(BaseModel):
    # Rows from the store carry more columns than the API shows; the API shows these.
    model_config = ConfigDict(extra="ignore")


# -- webhooks ----------------------------------------------------------------------------


class DeliveryAnswer(BaseModel):
    """What became of a webhook delivery."""

    status: Literal["accepted", "duplicate", "ignored"] = Field(
        description="accepted: a run started; duplicate: this delivery was already accepted "
        "(run_id is that run); ignored: no actor subscribes to the event type"
    )
    run_id: str | None
    event_type: str = Field(examples=["github.issues.opened"])
    delivery_id: str
    detail: str | None = None


# -- runs --------------------------------------------------------------------------------


class Usage(_Row):
    """Model usage committed so far, summed over the run's model calls."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0


class RunView(_Row):
    id: str
    status: RunStatus
    trigger_type: str
    trigger_event_id: str
    agent: str | None = None
    parent_run_id: str | None = None
    trace_id: str
    error: str | None = None
    created_at: float = Field(description="UNIX seconds")
    updated_at: float
    finished_at: float | None = None
    usage: Usage = Field(default_factory=Usage)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunView:
        return cls.model_validate({**row, "usage": Usage.model_validate(row)})


class RunPage(BaseModel):
    """Newest first; pass ``next_cursor`` as ``cursor`` for the next page (null: no more)."""

    runs: list[RunView]
    next_cursor: str | None


class EventView(_Row):
    id: str
    type: str
    data: dict[str, Any]
    cause_step_id: str | None = None
    position: int = 0
    created_at: float


class AttemptView(_Row):
    attempt: int
    worker: str
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = Field(None, description="the handler's traceback, for operators")


class StepView(_Row):
    id: str
    event_id: str
    actor: str
    queue: str
    state: str
    attempts: int = 0
    max_retries: int = 0
    error_type: str | None = None
    error_message: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempt_history: list[AttemptView] = Field(default_factory=list)


class WaitView(_Row):
    id: str
    step_id: str
    name: str
    state: str
    deadline: float | None = None
    data: dict[str, Any] | None = None
    created_at: float
    resolved_at: float | None = None


class AgentLoopView(_Row):
    id: str
    agent: str
    model: str
    status: str
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    output: Any = None
    created_at: float
    finished_at: float | None = None


class RunDetail(BaseModel):
    """A run whole: its log of events, its steps with every attempt, waits, memory, usage."""

    run: RunView
    events: list[EventView]
    steps: list[StepView]
    waits: list[WaitView]
    memory: dict[str, Any]
    usage: Usage
    agents: list[AgentLoopView] = Field(default_factory=list)


# -- commands ----------------------------------------------------------------------------

_REASON = Field(
    min_length=1,
    max_length=2000,
    pattern=r"\S",
    description="why: kept with the run",
    examples=["fixed the API key"],
)


class StartRun(BaseModel):
    type: str = Field(min_length=1, max_length=200, examples=["chain.start"])
    data: dict[str, Any] = Field(default_factory=dict, examples=[{"n": 5}])


class StartedRun(BaseModel):
    run_id: str
    created: bool = Field(description="false when the Idempotency-Key was seen before")
    subscribed: bool = Field(description="false when no actor subscribes to the type")


class Replay(BaseModel):
    """In place (the failed steps, or ``step_id``), or with ``from_step_id`` as a new run
    forked from that step; ``edit``, ``edit_output`` and ``recorded`` apply to a fork."""

    reason: str = _REASON
    step_id: str | None = Field(None, description="only this failed step (default: all)")
    from_step_id: str | None = Field(
        None, description="fork: a new run that keeps what came before this step and re-runs it"
    )
    edit: dict[str, Any] | None = Field(
        None, description="fork: fields merged into the step's input event"
    )
    edit_output: dict[str, Any] | None = Field(
        None,
        description="fork from a model call: fields merged into its recorded message, which "
        "the fork uses instead of asking the model",
    )
    recorded: bool = Field(
        False,
        description="fork: reuse the parent's model responses and tool results wherever the "
        "request is unchanged",
    )

    @model_validator(mode="after")
    def _one_mode(self) -> Replay:
        if self.from_step_id is None and (self.edit or self.edit_output or self.recorded):
            raise ValueError("edit, edit_output and recorded apply to a fork: add from_step_id")
        if self.from_step_id is not None and self.step_id is not None:
            raise ValueError("step_id replays in place, from_step_id forks: give one")
        return self


class Cancel(BaseModel):
    reason: str = _REASON


class Replayed(BaseModel):
    run_id: str
    replayed_steps: list[str]
    operation_id: str | None = Field(None, description="the operation that records this replay")
    fork_run_id: str | None = Field(None, description="the new run, for a fork")


class Canceled(BaseModel):
    run_id: str
    status: Literal["canceled"] = "canceled"


class Signalled(BaseModel):
    run_id: str
    name: str
    resumed_steps: int


class Health(BaseModel):
    status: Literal["ok", "ready"]
