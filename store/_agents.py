"""What agents keep: loops, the conversation, recorded model responses, tool intents, usage.

Functions taking a ``connection`` run inside a step's commit transaction; the others open
their own. Every read here is an index seek bounded by its arguments, never a whole history.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, union_all, update

from store._appending import insert_on_conflict_ignore
from store._engine import Store
from store._recorded import RecordedResponses, recorded_responses
from store._tables import agent_loops, conversation, model_calls, runs, tool_calls


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class RunTotals:
    model_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    loop_model_calls: int


def create_loop(
    connection: Connection,
    *,
    loop_id: str,
    run_id: str,
    agent: str,
    model: str,
    parent_loop_id: str | None,
    parent_call_id: str | None,
    messages: Sequence[dict[str, Any]],
    step_id: str,
) -> None:
    """Open an agent loop with its first messages (instructions and input)."""
    now = time.time()
    connection.execute(
        insert_on_conflict_ignore(connection, agent_loops),
        [
            {
                "id": loop_id,
                "run_id": run_id,
                "agent": agent,
                "model": model,
                "parent_loop_id": parent_loop_id,
                "parent_call_id": parent_call_id,
                "status": "running",
                "created_at": now,
            }
        ],
    )
    connection.execute(
        update(runs).where(runs.c.id == run_id, runs.c.agent.is_(None)).values(agent=agent)
    )
    append_messages(
        connection, loop_id=loop_id, run_id=run_id, step_id=step_id, start_seq=0, messages=messages
    )


def append_messages(
    connection: Connection,
    *,
    loop_id: str,
    run_id: str,
    step_id: str,
    start_seq: int,
    messages: Sequence[dict[str, Any]],
) -> None:
    """Append messages at ``start_seq``...; a position already taken is left as it is."""
    if not messages:
        return
    now = time.time()
    connection.execute(
        insert_on_conflict_ignore(connection, conversation),
        [
            {
                "loop_id": loop_id,
                "seq": start_seq + offset,
                "run_id": run_id,
                "role": message["role"],
                "content": message.get("content"),
                "tool_calls": message.get("tool_calls"),
                "tool_call_id": message.get("tool_call_id"),
                "name": message.get("name"),
                "step_id": step_id,
                "created_at": now,
            }
            for offset, message in enumerate(messages)
        ],
    )


@dataclass(frozen=True)
class ModelCallInputs:
    """What a model-call step reads before it asks: one read transaction, all index seeks."""

    messages: list[dict[str, Any]]
    totals: RunTotals
    recorded: RecordedResponses


def model_call_inputs(
    store: Store,
    *,
    run_id: str,
    loop_id: str,
    step_id: str,
    recorded_from: str | None,
    next_seq: int,
    head: int,
    window: int,
) -> ModelCallInputs:
    """The conversation window, the run's committed usage and any recorded responses."""
    with store.read() as connection:
        return ModelCallInputs(
            messages=read_window(connection, loop_id, next_seq=next_seq, head=head, window=window),
            totals=run_totals(connection, run_id, loop_id),
            recorded=recorded_responses(connection, step_id, recorded_from),
        )


def read_window(
    connection: Connection, loop_id: str, *, next_seq: int, head: int, window: int
) -> list[dict[str, Any]]:
    """The first ``head`` messages and the last ``window`` before ``next_seq``.

    Two index range scans, whatever the conversation's length. The tail never starts with a
    tool result whose request fell outside the window (the API would refuse it).
    """
    tail_start = max(head, next_seq - window)
    # Two ranges in one UNION ALL: with an OR, SQLite seeks on loop_id alone and reads every
    # message of the loop, so each step would cost more than the one before.
    first = select(conversation).where(conversation.c.loop_id == loop_id, conversation.c.seq < head)
    last = select(conversation).where(
        conversation.c.loop_id == loop_id,
        conversation.c.seq >= tail_start,
        conversation.c.seq < next_seq,
    )
    rows = connection.execute(union_all(first, last).order_by("seq")).all()
    messages = [_message(row) for row in rows]
    head_messages = [m for m, row in zip(messages, rows, strict=True) if row.seq < head]
    tail = [m for m, row in zip(messages, rows, strict=True) if row.seq >= head]
    while tail and tail[0]["role"] == "tool":
        tail.pop(0)
    return head_messages + tail


def _message(row: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": row.role, "content": row.content}
    if row.tool_calls:
        message["tool_calls"] = row.tool_calls
    if row.tool_call_id:
        message["tool_call_id"] = row.tool_call_id
    if row.name and row.role != "tool":
        message["name"] = row.name
    return message


def run_totals(connection: Connection, run_id: str, loop_id: str) -> RunTotals:
    """The run's committed usage and this loop's model calls: two primary-key reads."""
    run = connection.execute(
        select(
            runs.c.model_calls, runs.c.input_tokens, runs.c.output_tokens, runs.c.cost_usd
        ).where(runs.c.id == run_id)
    ).one()
    loop_calls = connection.execute(
        select(agent_loops.c.model_calls).where(agent_loops.c.id == loop_id)
    ).scalar()
    return RunTotals(
        run.model_calls, run.input_tokens, run.output_tokens, run.cost_usd, int(loop_calls or 0)
    )


def record_response(
    store: Store,
    *,
    step_id: str,
    run_id: str,
    loop_id: str,
    agent: str,
    model: str,
    request_hash: str,
    request: dict[str, Any],
    response: dict[str, Any],
    usage: Usage,
    latency_ms: float,
    attempt: int,
) -> None:
    """Keep the model's answer the moment it arrives, before the step commits.

    A worker killed between the two does not pay for the same call twice: the retry finds
    this row and reuses it.
    """
    values = {
        "run_id": run_id,
        "loop_id": loop_id,
        "agent": agent,
        "model": model,
        "request_hash": request_hash,
        "request": request,
        "response": response,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": usage.cost_usd,
        "latency_ms": latency_ms,
        "attempt": attempt,
        "created_at": time.time(),
    }
    with store.transaction() as connection:
        changed = connection.execute(
            update(model_calls).where(model_calls.c.step_id == step_id).values(**values)
        )
        if changed.rowcount == 0:
            connection.execute(insert(model_calls).values(step_id=step_id, **values))


def count_usage(
    connection: Connection, *, run_id: str, loop_id: str, step_id: str, usage: Usage
) -> None:
    """Add one model call's usage to the run's and the loop's totals, with the step's commit."""
    connection.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(
            model_calls=runs.c.model_calls + 1,
            input_tokens=runs.c.input_tokens + usage.input_tokens,
            output_tokens=runs.c.output_tokens + usage.output_tokens,
            cached_tokens=runs.c.cached_tokens + usage.cached_tokens,
            reasoning_tokens=runs.c.reasoning_tokens + usage.reasoning_tokens,
            cost_usd=runs.c.cost_usd + usage.cost_usd,
        )
    )
    connection.execute(
        update(agent_loops)
        .where(agent_loops.c.id == loop_id)
        .values(
            model_calls=agent_loops.c.model_calls + 1,
            input_tokens=agent_loops.c.input_tokens + usage.input_tokens,
            output_tokens=agent_loops.c.output_tokens + usage.output_tokens,
            cost_usd=agent_loops.c.cost_usd + usage.cost_usd,
        )
    )
    connection.execute(
        update(model_calls).where(model_calls.c.step_id == step_id).values(committed=True)
    )


def finish_loop(connection: Connection, loop_id: str, output: Any) -> None:
    connection.execute(
        update(agent_loops)
        .where(agent_loops.c.id == loop_id)
        .values(status="finished", output=output, finished_at=time.time())
    )


def tool_intent(
    store: Store,
    *,
    step_id: str,
    run_id: str,
    loop_id: str,
    call_id: str,
    tool: str,
    arguments: Any,
    attempt: int,
) -> Any:
    """Record that this step is about to call out; returns the earlier record if there is one.

    The earlier record tells a restarted step that a previous attempt may have reached the
    outside world already.
    """
    with store.transaction() as connection:
        earlier = connection.execute(
            select(tool_calls.c.state, tool_calls.c.attempt).where(tool_calls.c.step_id == step_id)
        ).first()
        if earlier is None:
            connection.execute(
                insert(tool_calls).values(
                    step_id=step_id,
                    run_id=run_id,
                    loop_id=loop_id,
                    call_id=call_id,
                    tool=tool,
                    arguments=arguments,
                    state="intent",
                    attempt=attempt,
                    created_at=time.time(),
                )
            )
        else:
            connection.execute(
                update(tool_calls).where(tool_calls.c.step_id == step_id).values(attempt=attempt)
            )
    return earlier


def record_tool_result(connection: Connection, step_id: str, result: Any) -> None:
    connection.execute(
        update(tool_calls)
        .where(tool_calls.c.step_id == step_id)
        .values(state="done", result=result, finished_at=time.time())
    )
