"""What agents keep: loops, the conversation, recorded model responses, tool intents, usage.

Functions taking a ``connection`` run inside a step's commit transaction; the others open
their own. Every read here is an index seek bounded by its arguments, never a whole history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from store import _hot as hot
from store._engine import Store
from store._errors import LeaseLost
from store._hot import Statement, json_in
from store._recorded import RecordedResponses, recorded_responses


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
    _LOOP_INSERT.run(
        connection,
        {
            "id": loop_id,
            "run_id": run_id,
            "agent": agent,
            "model": model,
            "parent_loop_id": parent_loop_id,
            "parent_call_id": parent_call_id,
            "created_at": time.time(),
        },
    )
    _RUN_AGENT.run(connection, {"id": run_id, "agent": agent})
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
    _MESSAGES_INSERT.run(
        connection,
        [
            {
                "loop_id": loop_id,
                "seq": start_seq + offset,
                "run_id": run_id,
                "role": message["role"],
                "content": _json_in(connection, message.get("content")),
                "tool_calls": _json_in(connection, message.get("tool_calls")),
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
    """``read_model_call_inputs`` in a read transaction of its own."""
    with store.read() as connection:
        return read_model_call_inputs(
            connection,
            run_id=run_id,
            loop_id=loop_id,
            step_id=step_id,
            recorded_from=recorded_from,
            next_seq=next_seq,
            head=head,
            window=window,
        )


def read_model_call_inputs(
    connection: Connection,
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
    rows = list(
        _WINDOW_READ.run(
            connection,
            {"loop_id": loop_id, "head": head, "tail_start": tail_start, "next_seq": next_seq},
        )
    )
    parse = hot.json_reader(connection)
    messages = [_message(row, parse) for row in rows]
    head_messages = [m for m, row in zip(messages, rows, strict=True) if row.seq < head]
    tail = [m for m, row in zip(messages, rows, strict=True) if row.seq >= head]
    while tail and tail[0]["role"] == "tool":
        tail.pop(0)
    return head_messages + tail


def _message(row: Any, parse: Callable[[Any], Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": row.role, "content": parse(row.content)}
    tool_calls_ = parse(row.tool_calls)
    if tool_calls_:
        message["tool_calls"] = tool_calls_
    if row.tool_call_id:
        message["tool_call_id"] = row.tool_call_id
    if row.name and row.role != "tool":
        message["name"] = row.name
    return message


def run_totals(connection: Connection, run_id: str, loop_id: str) -> RunTotals:
    """The run's committed usage and this loop's model calls: two primary-key reads."""
    run = _TOTALS_READ.run(connection, {"run_id": run_id, "loop_id": loop_id}).first()
    if run is None:
        raise LookupError(f"no run {run_id}")
    return RunTotals(
        run.model_calls,
        run.input_tokens,
        run.output_tokens,
        run.cost_usd,
        int(run.loop_calls or 0),
    )


def record_response(
    connection: Connection,
    *,
    step_id: str,
    run_id: str,
    loop_id: str,
    agent: str,
    model: str,
    request_hash: str,
    request: str,
    response: dict[str, Any],
    usage: Usage,
    latency_ms: float,
    attempt: int,
) -> None:
    """Keep the model's answer with the transaction that ends its attempt: the step's commit,
    or the record of its failure, so a retry reuses it instead of paying for it again.
    ``request`` is the request's JSON text, as it was sent."""
    _RESPONSE_UPSERT.run(
        connection,
        {
            "step_id": step_id,
            "run_id": run_id,
            "loop_id": loop_id,
            "agent": agent,
            "model": model,
            "request_hash": request_hash,
            "request": hot.json_text_in(connection, request),
            "response": _json_in(connection, response),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cost_usd": usage.cost_usd,
            "latency_ms": latency_ms,
            "attempt": attempt,
            "created_at": time.time(),
        },
    )


def count_usage(
    connection: Connection, *, run_id: str, loop_id: str, step_id: str, usage: Usage
) -> None:
    """Add one model call's usage to the run's and the loop's totals, once per answer: with
    the transaction that ends the attempt which recorded it (its commit, or the record of
    its failure: a failed step's answer was paid for too). A later attempt that reuses the
    answer adds nothing; one that asks again (its request changed) records a new answer,
    which counts."""
    if _RESPONSE_COUNTED.run(connection, {"step_id": step_id}).rowcount != 1:
        return
    counted = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": usage.cost_usd,
    }
    _RUN_USAGE.run(
        connection,
        {
            "id": run_id,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            **counted,
        },
    )
    _LOOP_USAGE.run(connection, {"id": loop_id, **counted})


def finish_loop(connection: Connection, loop_id: str, output: Any) -> None:
    _LOOP_FINISH.run(
        connection,
        {"id": loop_id, "output": _json_in(connection, output), "finished_at": time.time()},
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
    owner: str,
) -> Any:
    """Record that this step is about to call out; returns the earlier record if there is one.

    The earlier record tells a restarted step that a previous attempt may have reached the
    outside world already. The intent is recorded only while ``owner`` still holds the
    step's ``attempt``; otherwise LeaseLost, with nothing written: a worker that stalled past
    its lease must not call out after the attempt that replaced it has (its record says
    "done", which would not stop it).
    """
    with store.transaction() as connection:
        held = _TOOL_LEASE_HELD.run(
            connection, {"step_id": step_id, "owner": owner, "attempt": attempt}
        ).first()
        if held is None:
            raise LeaseLost(
                f"step {step_id} (tool {tool!r}) is no longer held by {owner} at attempt "
                f"{attempt}: another worker took it, or the run was replayed; the tool is "
                "not called"
            )
        earlier = _TOOL_EARLIER.run(connection, {"step_id": step_id}).first()
        if earlier is None:
            _TOOL_INTENT.run(
                connection,
                {
                    "step_id": step_id,
                    "run_id": run_id,
                    "loop_id": loop_id,
                    "call_id": call_id,
                    "tool": tool,
                    "arguments": _json_in(connection, arguments),
                    "attempt": attempt,
                    "created_at": time.time(),
                },
            )
        else:
            _TOOL_ATTEMPT.run(connection, {"step_id": step_id, "attempt": attempt})
    return earlier


def record_tool_call(
    connection: Connection,
    *,
    step_id: str,
    run_id: str,
    loop_id: str,
    call_id: str,
    tool: str,
    arguments: Any,
    attempt: int,
    result: Any,
) -> None:
    """The call of an idempotent tool and its result, with the step's commit: no intent is
    written before it, since an attempt that died would be called again all the same."""
    now = time.time()
    _TOOL_CALLED.run(
        connection,
        {
            "step_id": step_id,
            "run_id": run_id,
            "loop_id": loop_id,
            "call_id": call_id,
            "tool": tool,
            "arguments": _json_in(connection, arguments),
            "attempt": attempt,
            "result": _json_in(connection, result),
            "created_at": now,
            "finished_at": now,
        },
    )


def record_tool_result(connection: Connection, step_id: str, result: Any) -> None:
    _TOOL_DONE.run(
        connection,
        {"step_id": step_id, "result": _json_in(connection, result), "finished_at": time.time()},
    )


# -- the fixed SQL of every model and tool call (see store/_hot.py for why it is driver SQL) --

_LOOP_INSERT = Statement(
    """
    INSERT INTO agent_loops (id, run_id, agent, model, parent_loop_id, parent_call_id, status,
                             model_calls, input_tokens, output_tokens, cost_usd, created_at)
    VALUES (:id, :run_id, :agent, :model, :parent_loop_id, :parent_call_id, 'running',
            0, 0, 0, 0.0, :created_at)
    ON CONFLICT DO NOTHING
    """
)

_RUN_AGENT = Statement("UPDATE runs SET agent = :agent WHERE id = :id AND agent IS NULL")

_MESSAGE_COLUMNS = "seq, role, content, tool_calls, tool_call_id, name"
_WINDOW_READ = Statement(
    f"""
    SELECT {_MESSAGE_COLUMNS} FROM conversation WHERE loop_id = :loop_id AND seq < :head
    UNION ALL
    SELECT {_MESSAGE_COLUMNS} FROM conversation
    WHERE loop_id = :loop_id AND seq >= :tail_start AND seq < :next_seq
    ORDER BY seq
    """
)
# Two ranges in one UNION ALL: with an OR, SQLite seeks on loop_id alone and reads every
# message of the loop, so each step would cost more than the one before.

_MESSAGES_INSERT = Statement(
    """
    INSERT INTO conversation (loop_id, seq, run_id, role, content, tool_calls, tool_call_id,
                              name, step_id, created_at)
    VALUES (:loop_id, :seq, :run_id, :role, :content, :tool_calls, :tool_call_id, :name,
            :step_id, :created_at)
    ON CONFLICT DO NOTHING
    """
)

_TOTALS_READ = Statement(
    """
    SELECT model_calls, input_tokens, output_tokens, cost_usd,
           (SELECT model_calls FROM agent_loops WHERE id = :loop_id) AS loop_calls
    FROM runs WHERE id = :run_id
    """
)

_RESPONSE_UPSERT = Statement(
    """
    INSERT INTO model_calls (step_id, run_id, loop_id, agent, model, request_hash, request,
                             response, input_tokens, output_tokens, cached_tokens,
                             reasoning_tokens, cost_usd, latency_ms, attempt, committed,
                             created_at)
    VALUES (:step_id, :run_id, :loop_id, :agent, :model, :request_hash, :request, :response,
            :input_tokens, :output_tokens, :cached_tokens, :reasoning_tokens, :cost_usd,
            :latency_ms, :attempt, FALSE, :created_at)
    ON CONFLICT (step_id) DO UPDATE SET
        run_id = excluded.run_id, loop_id = excluded.loop_id, agent = excluded.agent,
        model = excluded.model, request_hash = excluded.request_hash,
        request = excluded.request, response = excluded.response,
        input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
        cached_tokens = excluded.cached_tokens, reasoning_tokens = excluded.reasoning_tokens,
        cost_usd = excluded.cost_usd, latency_ms = excluded.latency_ms,
        attempt = excluded.attempt, created_at = excluded.created_at,
        committed = FALSE
    """
)

_RUN_USAGE = Statement(
    """
    UPDATE runs SET model_calls = model_calls + 1,
        input_tokens = input_tokens + :input_tokens,
        output_tokens = output_tokens + :output_tokens,
        cached_tokens = cached_tokens + :cached_tokens,
        reasoning_tokens = reasoning_tokens + :reasoning_tokens,
        cost_usd = cost_usd + :cost_usd
    WHERE id = :id
    """
)

_LOOP_USAGE = Statement(
    """
    UPDATE agent_loops SET model_calls = model_calls + 1,
        input_tokens = input_tokens + :input_tokens,
        output_tokens = output_tokens + :output_tokens,
        cost_usd = cost_usd + :cost_usd
    WHERE id = :id
    """
)

# `committed`: the answer's usage is in its run's and loop's totals.
_RESPONSE_COUNTED = Statement(
    "UPDATE model_calls SET committed = TRUE WHERE step_id = :step_id AND NOT committed"
)

_TOOL_EARLIER = Statement("SELECT state, attempt FROM tool_calls WHERE step_id = :step_id")

_TOOL_LEASE_HELD = Statement(
    """
    SELECT id FROM steps
    WHERE id = :step_id AND lease_owner = :owner AND attempts = :attempt AND state = 'running'
    """
)

_TOOL_INTENT = Statement(
    """
    INSERT INTO tool_calls (step_id, run_id, loop_id, call_id, tool, arguments, state, attempt,
                            created_at)
    VALUES (:step_id, :run_id, :loop_id, :call_id, :tool, :arguments, 'intent', :attempt,
            :created_at)
    """
)

_TOOL_ATTEMPT = Statement("UPDATE tool_calls SET attempt = :attempt WHERE step_id = :step_id")

_TOOL_CALLED = Statement(
    """
    INSERT INTO tool_calls (step_id, run_id, loop_id, call_id, tool, arguments, state, attempt,
                            result, created_at, finished_at)
    VALUES (:step_id, :run_id, :loop_id, :call_id, :tool, :arguments, 'done', :attempt,
            :result, :created_at, :finished_at)
    ON CONFLICT (step_id) DO UPDATE SET
        state = 'done', attempt = excluded.attempt, result = excluded.result,
        finished_at = excluded.finished_at
    """
)

_LOOP_FINISH = Statement(
    """
    UPDATE agent_loops SET status = 'finished', output = :output, finished_at = :finished_at
    WHERE id = :id
    """
)

_TOOL_DONE = Statement(
    """
    UPDATE tool_calls SET state = 'done', result = :result, finished_at = :finished_at
    WHERE step_id = :step_id
    """
)


def _json_in(connection: Connection, value: Any) -> Any:
    """A value for a nullable JSON column: SQL NULL for None."""
    return None if value is None else json_in(connection, value)
