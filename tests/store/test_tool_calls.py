"""A tool's intent (DESIGN.md invariant 6) on the real store: recorded only by the worker
that still holds the step's attempt."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from sqlalchemy import select

from store import NewEvent, Route, Store, claim_step, create_run
from store._agents import record_tool_result, tool_intent
from store._errors import LeaseLost
from store._tables import tool_calls


def router(event_type: str) -> Sequence[Route]:
    return [Route("t_data.call_out", "default", max_retries=3)]


def intent(store: Store, step_id: str, run_id: str, *, owner: str, attempt: int) -> object:
    return tool_intent(
        store,
        step_id=step_id,
        run_id=run_id,
        loop_id="t-loop",
        call_id="call_t_data",
        tool="t_data_charge",
        arguments={"cents": 500},
        attempt=attempt,
        owner=owner,
    )


def test_a_worker_whose_lease_ran_out_is_refused_its_intent_and_writes_nothing(
    store: Store,
) -> None:
    # Given a step whose first worker stalled past its lease, and a second worker that took
    # it over, called the tool and recorded the result
    created = create_run(store, NewEvent("t_data.call_out", {}), router)
    [publish] = created.publish
    assert claim_step(store, publish.step_id, "worker-a", 0.05).step is not None
    time.sleep(0.1)
    taken = claim_step(store, publish.step_id, "worker-b", 30.0)
    assert taken.step is not None and taken.step.attempt == 2
    assert intent(store, publish.step_id, created.run_id, owner="worker-b", attempt=2) is None
    with store.transaction() as connection:
        record_tool_result(connection, publish.step_id, "charged")

    # When the first worker wakes up and is about to call the tool
    # Then it is refused (the record it would find says "done", which would not stop it)
    with pytest.raises(LeaseLost, match="the tool is not called"):
        intent(store, publish.step_id, created.run_id, owner="worker-a", attempt=1)

    # And the record is the second worker's, untouched
    with store.read() as connection:
        rows = connection.execute(
            select(tool_calls.c.state, tool_calls.c.attempt).where(
                tool_calls.c.step_id == publish.step_id
            )
        ).all()
    assert [tuple(row) for row in rows] == [("done", 2)]
