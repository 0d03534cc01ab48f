"""A model answer's usage in its run's and loop's totals, on the real store: once per answer,
whichever transaction ends the attempt that got it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import Connection

from store import NewEvent, Route, Store, create_run, run_detail
from store._agents import Usage, count_usage, create_loop, record_response

LOOP = "t-usage-loop"


def router(event_type: str) -> Sequence[Route]:
    return [Route("t_usage.ask", "default", max_retries=3)]


def test_an_answer_counts_once_and_the_answer_to_a_changed_request_counts_too(
    store: Store,
) -> None:
    # Given a step of an agent loop
    created = create_run(store, NewEvent("t_usage.start", {}), router)
    run_id, step_id = created.run_id, created.publish[0].step_id
    with store.transaction() as connection:
        create_loop(
            connection,
            loop_id=LOOP,
            run_id=run_id,
            agent="t_usage_agent",
            model="gpt-4.1-mini",
            parent_loop_id=None,
            parent_call_id=None,
            messages=[{"role": "user", "content": "hello"}],
            step_id=step_id,
        )

    def answered(connection: Connection, request_hash: str, tokens: int) -> Usage:
        usage = Usage(input_tokens=tokens, output_tokens=1, cost_usd=tokens / 1_000_000)
        record_response(
            connection,
            step_id=step_id,
            run_id=run_id,
            loop_id=LOOP,
            agent="t_usage_agent",
            model="gpt-4.1-mini",
            request_hash=request_hash,
            request='{"model": "gpt-4.1-mini"}',
            response={"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
            usage=usage,
            latency_ms=5.0,
            attempt=1,
        )
        return usage

    def counted(connection: Connection, usage: Usage) -> None:
        count_usage(connection, run_id=run_id, loop_id=LOOP, step_id=step_id, usage=usage)

    # When its first attempt is answered and then fails (the record of the failure counts it)
    with store.transaction() as connection:
        first = answered(connection, "request-1", 100)
        counted(connection, first)
    # And its retry reuses that answer and commits
    with store.transaction() as connection:
        counted(connection, first)
    # And, replayed after the request changed, it is asked again and commits
    with store.transaction() as connection:
        counted(connection, answered(connection, "request-2", 500))

    # Then the run and the loop count both answers, each once
    detail = run_detail(store, run_id)
    assert (detail["run"]["model_calls"], detail["run"]["input_tokens"]) == (2, 600)
    assert detail["run"]["cost_usd"] == pytest.approx((100 + 500) / 1_000_000)
    (loop,) = detail["agents"]
    assert (loop["model_calls"], loop["input_tokens"], loop["output_tokens"]) == (2, 600, 2)
