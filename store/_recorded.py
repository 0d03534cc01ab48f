"""What a model or tool call may reuse instead of calling out (DESIGN.md invariant 7).

In order: the answer an earlier attempt of the same step recorded for the same request; a
response an operator supplied for the step (a fork with an edited model output); and, in a
recorded fork, the parent run's answer at the same causal position when the request is
unchanged. Each is one primary-key read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from store import _hot as hot
from store._engine import Store
from store._errors import InvalidState
from store._hot import Statement
from store._tables import model_calls, tool_calls

MODEL_CALL_ACTOR = "baton.agent.model_call"

# The request hash of a response an operator supplied: served whatever the request is.
OPERATOR_SUPPLIED = "operator"

OWN = "own"
OPERATOR = "operator"
RECORDING = "recording"


@dataclass(frozen=True)
class Reusable:
    response: dict[str, Any]
    source: str  # own | operator | recording


@dataclass(frozen=True)
class RecordedResponses:
    """The model-call rows a step may reuse: its own, and in a recorded fork the parent's."""

    own: tuple[dict[str, Any], str] | None  # (response, request hash)
    original: tuple[dict[str, Any], str] | None

    def reusable(self, request_hash: str) -> Reusable | None:
        """The response to use for this request without asking the model, or None."""
        if self.own is not None and self.own[1] == request_hash:
            return Reusable(dict(self.own[0]), OWN)
        if self.own is not None and self.own[1] == OPERATOR_SUPPLIED:
            return Reusable(dict(self.own[0]), OPERATOR)
        if self.original is not None and self.original[1] == request_hash:
            return Reusable(dict(self.original[0]), RECORDING)
        return None


def recorded_responses(
    connection: Connection, step_id: str, recorded_from: str | None
) -> RecordedResponses:
    """This step's recorded response and, in a recorded fork, the parent step's: PK reads."""
    parse = hot.json_reader(connection)
    own = _RESPONSE_READ.run(connection, {"step_id": step_id}).first()
    original = None
    if recorded_from is not None:
        original = _RESPONSE_READ.run(connection, {"step_id": recorded_from}).first()
    return RecordedResponses(
        own=(parse(own.response), own.request_hash) if own is not None else None,
        original=(parse(original.response), original.request_hash) if original else None,
    )


_RESPONSE_READ = Statement(
    "SELECT response, request_hash FROM model_calls WHERE step_id = :step_id"
)


def recorded_tool_result(store: Store, recorded_from: str, tool: str, arguments: Any) -> Any:
    """The parent run's result for this tool call if it called the same tool with the same
    arguments at the same position and got an answer; else None."""
    with store.read() as connection:
        original = connection.execute(
            select(
                tool_calls.c.tool, tool_calls.c.arguments, tool_calls.c.state, tool_calls.c.result
            ).where(tool_calls.c.step_id == recorded_from)
        ).first()
    if (
        original is None
        or original.state != "done"
        or original.tool != tool
        or original.arguments != arguments
    ):
        return None
    return original.result


def supply_response(
    connection: Connection,
    step: Any,
    *,
    new_step_id: str,
    run_id: str,
    loops: Mapping[str, str],
    edit_output: Mapping[str, Any],
) -> None:
    """A fork's model-call step gets its parent's recorded response with an edited message,
    as a response an operator supplied: the step uses it instead of asking the model."""
    from_step_id = step.id
    if step.actor != MODEL_CALL_ACTOR:
        raise InvalidState(
            f"step {from_step_id} is a {step.actor} step; an edited output applies to a "
            f"{MODEL_CALL_ACTOR} step (use --edit to change a step's input)"
        )
    call = connection.execute(
        select(model_calls).where(model_calls.c.step_id == from_step_id)
    ).first()
    if call is None:
        raise InvalidState(
            f"step {from_step_id} has no recorded model response to edit; fork without "
            "an edited output"
        )
    response = dict(call.response)
    choices = [dict(choice) for choice in response.get("choices") or [{}]]
    message = {**(choices[0].get("message") or {}), **edit_output}
    calls = message.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list)
        and all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls)
    ):
        raise InvalidState(
            'tool_calls in an edited output is a list of {"id": ..., "type": "function", '
            '"function": {"name": ..., "arguments": "..."}}'
        )
    if not message.get("content") and not calls:
        raise InvalidState("an edited output needs a content or tool_calls")
    choices[0] = {**choices[0], "message": message}
    response["choices"] = choices
    connection.execute(
        insert(model_calls).values(
            **{
                **dict(call._mapping),
                "step_id": new_step_id,
                "run_id": run_id,
                "loop_id": loops.get(call.loop_id, call.loop_id),
                "request_hash": OPERATOR_SUPPLIED,
                "response": response,
                "committed": False,
                "latency_ms": 0.0,
                "created_at": time.time(),
            }
        )
    )
