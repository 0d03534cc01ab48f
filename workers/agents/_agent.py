"""``Agent``: a model, instructions, tools and a policy. Its loop is built-in actors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from store import local_id
from store._agents import create_loop
from workers._context import Context
from workers._errors import ActorError
from workers.agents._events import ModelCallRequested, ParentCall
from workers.agents._tool import Tool

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# The instructions and the input: kept in every request, however long the conversation grows.
HEAD_MESSAGES = 2

_agents: dict[str, Agent] = {}


@dataclass(frozen=True)
class Policy:
    """Limits checked against the run's committed totals before every model call."""

    max_steps: int
    max_tokens: int | None
    max_cost_usd: float | None


class Agent:
    """An agent. ``agent.start(ctx, input)`` from any actor begins its loop in the current run;
    its output arrives as an ``agent.finished`` event.

    An agent is fixed once defined: its tools and output schema are built into the request at
    its first model call and reused, so changing ``tools`` or ``output`` later has no effect.
    """

    def __init__(
        self,
        name: str,
        model: str,
        instructions: str,
        tools: Sequence[Tool | Agent] = (),
        output: type[BaseModel] | None = None,
        *,
        description: str | None = None,
        max_steps: int = 20,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        context_window: int = 40,
        temperature: float | None = None,
        seed: int | None = None,
        parallel_tool_calls: bool | None = None,
        model_settings: dict[str, Any] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        label = f"agent {name!r}"
        if not _NAME.match(name):
            raise ActorError(f"{label}: the name must be 1-64 letters, digits, '_' or '-'")
        if not model:
            raise ActorError(f"{label} needs a model, e.g. model='gpt-4.1-mini'")
        if max_steps < 1:
            raise ActorError(f"{label}: max_steps must be at least 1, got {max_steps}")
        if max_tokens is not None and max_tokens < 1:
            raise ActorError(f"{label}: max_tokens must be positive, got {max_tokens}")
        if max_cost_usd is not None and max_cost_usd <= 0:
            raise ActorError(f"{label}: max_cost_usd must be positive, got {max_cost_usd}")
        if context_window < 2:
            raise ActorError(f"{label}: context_window must be at least 2 messages")
        if output is not None and not (isinstance(output, type) and issubclass(output, BaseModel)):
            raise ActorError(f"{label}: output must be a pydantic model class, got {output!r}")
        names: list[str] = [str(getattr(t, "name", "")) for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ActorError(f"{label}: two tools are named {', '.join(duplicates)}")
        for item in tools:
            if not isinstance(item, Tool | Agent):
                raise ActorError(
                    f"{label}: tools takes @tool functions and Agents, got {item!r}; decorate "
                    "the function with @tool"
                )
        self.name = name
        self.model = model
        self.instructions = instructions
        self.tools = list(tools)
        self.output = output
        self.description = description or instructions.strip().split("\n")[0][:200]
        self.policy = Policy(max_steps, max_tokens, max_cost_usd)
        self.context_window = context_window
        self.settings = {
            **({"temperature": temperature} if temperature is not None else {}),
            **({"seed": seed} if seed is not None else {}),
            **(
                {"parallel_tool_calls": parallel_tool_calls}
                if parallel_tool_calls is not None and tools
                else {}
            ),
            **(model_settings or {}),
        }
        self.base_url = base_url
        self.api_key = api_key
        self._offered: dict[str, Any] | None = None
        existing = _agents.get(name)
        if existing is not None and existing.instructions != instructions:
            raise ActorError(f"two agents are named {name!r}; agent names are unique")
        _agents[name] = self

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, model={self.model!r}, tools={[t.name for t in self.tools]})"

    def start(self, ctx: Context, input: str) -> ModelCallRequested:
        """Begin this agent's loop in the current run; return the event from your handler."""
        return self.begin(ctx, input, parent=None)

    def begin(self, ctx: Context, input: str, parent: ParentCall | None) -> ModelCallRequested:
        loop_id = local_id(
            ctx.step_id, "loop", ctx.step_id, self.name, parent.call_id if parent else ""
        )
        messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": input},
        ]

        def open_loop(connection: Any) -> None:
            create_loop(
                connection,
                loop_id=loop_id,
                run_id=ctx.run_id,
                agent=self.name,
                model=self.model,
                parent_loop_id=parent.loop_id if parent else None,
                parent_call_id=parent.call_id if parent else None,
                messages=messages,
                step_id=ctx.step_id,
            )

        ctx.defer_write(open_loop)
        return ModelCallRequested(
            agent=self.name, loop_id=loop_id, seq=HEAD_MESSAGES, parent=parent
        )

    def tool_named(self, name: str) -> Tool | Agent | None:
        return next((t for t in self.tools if t.name == name), None)

    def tool_schema(self) -> dict[str, Any]:
        """This agent offered as a tool to another agent (a hand-off)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "input": {"type": "string", "description": "What to ask this agent."}
                    },
                    "required": ["input"],
                },
            },
        }

    def request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The Chat Completions request for the next model call."""
        return {"model": self.model, "messages": messages, **self.settings, **self._offer()}

    def _offer(self) -> dict[str, Any]:
        """The tools and the response format: the same in every request, so built once."""
        if self._offered is None:
            offer: dict[str, Any] = {}
            if self.tools:
                offer["tools"] = [
                    t.schema() if isinstance(t, Tool) else t.tool_schema() for t in self.tools
                ]
            if self.output is not None:
                offer["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": self.output.__name__,
                        "schema": self.output.model_json_schema(),
                    },
                }
            self._offered = offer
        return self._offered


def agent_named(name: str) -> Agent:
    try:
        return _agents[name]
    except KeyError:
        known = ", ".join(sorted(_agents)) or "none"
        raise ActorError(
            f"no agent named {name!r} in this worker (known: {known}); start the worker with "
            "the module that declares it"
        ) from None


def registered_agent(name: str) -> Agent | None:
    return _agents.get(name)


def registered_agents() -> list[Agent]:
    return list(_agents.values())
