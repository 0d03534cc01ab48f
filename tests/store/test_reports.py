"""Runs as data on the real store: outcome labels, agent loops paged out for export, a run's
model exchanges in order, and per-agent figures that match the runs."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import update

from store import (
    ExportFilter,
    InvalidState,
    NewEvent,
    NotFound,
    Route,
    Store,
    agent_stats,
    create_run,
    label_of,
    label_run,
    loops_for_export,
    model_exchanges,
)
from store._agents import Usage, append_messages, count_usage, create_loop, record_response
from store._tables import runs


def router(event_type: str) -> Sequence[Route]:
    return []


TOOL = {"type": "function", "function": {"name": "t_data_lookup", "parameters": {"type": "object"}}}


def agent_run(
    store: Store,
    agent: str,
    *,
    status: str = "succeeded",
    tokens: tuple[int, int] = (100, 20),
    cost: float = 0.01,
    calls: int = 1,
) -> str:
    """A finished run in which ``agent`` made ``calls`` model calls, recorded as workers do."""
    run_id = create_run(store, NewEvent("t_data.report", {}), router, agent=agent).run_id
    loop_id = f"loop-{run_id}"
    with store.transaction() as connection:
        create_loop(
            connection,
            loop_id=loop_id,
            run_id=run_id,
            agent=agent,
            model="gpt-4.1-mini",
            parent_loop_id=None,
            parent_call_id=None,
            step_id="s0",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"question of {run_id}"},
            ],
        )
    for n in range(calls):
        step_id = f"{run_id}-call-{n}"
        request = {
            "model": "gpt-4.1-mini",
            "messages": [{"role": "user", "content": str(n)}],
            "tools": [TOOL],
        }
        response = {
            "id": f"r{n}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer {n}"},
                    "finish_reason": "stop",
                }
            ],
        }
        usage = Usage(input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=cost)
        with store.transaction() as connection:
            record_response(
                connection,
                step_id=step_id,
                run_id=run_id,
                loop_id=loop_id,
                agent=agent,
                model="gpt-4.1-mini",
                request_hash=str(n),
                request=json.dumps(request),
                response=response,
                usage=usage,
                latency_ms=1.0,
                attempt=1,
            )
            append_messages(
                connection,
                loop_id=loop_id,
                run_id=run_id,
                step_id=step_id,
                start_seq=2 + n,
                messages=[{"role": "assistant", "content": f"answer {n}"}],
            )
            count_usage(connection, run_id=run_id, loop_id=loop_id, step_id=step_id, usage=usage)
    with store.transaction() as connection:
        connection.execute(update(runs).where(runs.c.id == run_id).values(status=status))
    return run_id


def test_a_label_is_recorded_and_relabelling_replaces_it(store: Store) -> None:
    # Given a run
    run_id = agent_run(store, "t_data_labels")
    # When it is labelled good, then bad with a note
    label_run(store, run_id, "good")
    label_run(store, run_id, "bad", note="wrong label applied")
    # Then only the last label counts, with its note
    found = label_of(store, run_id)
    assert found is not None and (found["label"], found["note"]) == ("bad", "wrong label applied")
    # And an unknown outcome or run is refused, saying what to do
    with pytest.raises(InvalidState, match="good, bad"):
        label_run(store, run_id, "meh")
    with pytest.raises(NotFound, match="baton runs list"):
        label_run(store, "nope", "good")


def test_loops_are_paged_out_oldest_first_with_their_conversation_and_tools(store: Store) -> None:
    # Given five runs of two agents, some failed, some labelled
    helper = [agent_run(store, "t_data_pager", calls=2) for _ in range(3)]
    other = agent_run(store, "t_data_other")
    failed = agent_run(store, "t_data_pager", status="failed")
    label_run(store, helper[1], "good")
    # When every loop is read in pages of two runs
    records = list(loops_for_export(store, ExportFilter(page_size=2)))
    # Then all five come back, oldest run first, each with its conversation in order
    assert [r.run_id for r in records] == [*helper, other, failed]
    first = records[0]
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant", "assistant"]
    assert first.messages[1]["content"] == f"question of {helper[0]}"
    # And with the tools of the loop's first request
    assert first.request is not None and first.request["tools"] == [TOOL]
    assert first.request["messages"] == [{"role": "user", "content": "0"}]

    # And the filters select by agent, status, label, time and run
    def run_ids(**where: Any) -> list[str]:
        return [r.run_id for r in loops_for_export(store, ExportFilter(page_size=2, **where))]

    assert run_ids(agent="t_data_pager", status="succeeded") == helper
    assert run_ids(label="good") == [helper[1]]
    assert run_ids(run_id=other) == [other]
    assert run_ids(since=time.time() + 60) == []


def test_model_exchanges_come_back_in_the_order_they_were_made(store: Store) -> None:
    # Given a run with three model calls
    run_id = agent_run(store, "t_data_cassette", calls=3)
    # Then its exchanges are its requests and responses, in order
    exchanges = model_exchanges(store, run_id)
    assert [e["request"]["messages"][0]["content"] for e in exchanges] == ["0", "1", "2"]
    assert exchanges[2]["response"]["choices"][0]["message"]["content"] == "answer 2"
    with pytest.raises(NotFound):
        model_exchanges(store, "nope")


def test_agent_stats_match_the_runs(store: Store) -> None:
    # Given three succeeded and one failed run of one agent, and one run of another
    done = [
        agent_run(store, "t_data_stats", tokens=(100 * n, 10 * n), cost=0.01 * n) for n in (1, 2, 3)
    ]
    agent_run(store, "t_data_stats", status="failed", tokens=(50, 5), cost=0.005)
    agent_run(store, "t_data_stats_other", tokens=(7, 1), cost=0.5)
    # And two of the first agent's runs labelled good, one bad
    label_run(store, done[0], "good")
    label_run(store, done[1], "good")
    label_run(store, done[2], "bad")
    # When the figures are read for the last hour
    figures = {f["agent"]: f for f in agent_stats(store, since=time.time() - 3600)}
    # Then they are the runs' totals, with the success rate and the cost per good outcome
    stats = figures["t_data_stats"]
    assert (stats["runs"], stats["succeeded"], stats["failed"], stats["finished"]) == (4, 3, 1, 4)
    assert stats["success_rate"] == pytest.approx(0.75)
    assert (stats["input_tokens"], stats["output_tokens"]) == (650, 65)
    assert stats["model_calls"] == 4
    assert stats["cost_usd"] == pytest.approx(0.065)
    assert (stats["good"], stats["bad"]) == (2, 1)
    assert stats["cost_per_good_usd"] == pytest.approx(0.0325)
    assert figures["t_data_stats_other"]["cost_per_good_usd"] is None
    # And --agent narrows to one agent; a window in the future has nothing
    assert [f["agent"] for f in agent_stats(store, agent="t_data_stats_other")] == [
        "t_data_stats_other"
    ]
    assert agent_stats(store, since=time.time() + 60) == []
