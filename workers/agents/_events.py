"""The agent loop's events: model call → tool calls (fanned out) → joined → model call → done."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from events import Event


class ParentCall(BaseModel):
    """Where a handed-off agent reports back: the tool call of the agent that called it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str
    loop_id: str
    call_id: str
    name: str
    index: int
    count: int
    seq: int
    parent: ParentCall | None = None


class ModelCallRequested(Event, type="agent.model_call"):
    """Ask the agent's model for its next message; it lands at position ``seq``."""

    agent: str
    loop_id: str
    seq: int
    repair: bool = False
    parent: ParentCall | None = None


class ToolCallRequested(Event, type="agent.tool_call"):
    """One tool call from a model response; its answer lands at ``seq + index``."""

    agent: str
    loop_id: str
    call_id: str
    name: str
    arguments: str
    index: int
    count: int
    seq: int
    parent: ParentCall | None = None


class ToolCallFinished(Event, type="agent.tool_result"):
    """A tool's answer, on its way back to the model once every sibling call is done."""

    agent: str
    loop_id: str
    call_id: str
    name: str
    content: str
    index: int
    count: int
    seq: int
    parent: ParentCall | None = None


class AgentFinished(Event, type="agent.finished"):
    """An agent's final output: validated against its ``output`` model when it has one."""

    agent: str
    loop_id: str
    output: Any
