"""Replay on real workers: in place, as a fork with an edited input, and as a recorded fork of
an agent served by the offline model over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from store import (
    Operator,
    Store,
    divergence,
    fork_run,
    read_memory,
    replay_failed_steps,
    run_detail,
)
from store._tables import events, memory, model_calls, steps, tool_calls
from tests.actors import effects
from tests.actors.ops import OpsAsk, OpsStart, ops_agent
from tests.conftest import wait_for_run
from workers import Worker
from workers.agents.offline_model import OfflineModelConfig, OfflineModelHandle, start_in_thread


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    return effects.create(tmp_path / "ledger.db")


@pytest.fixture
def model() -> Iterator[OfflineModelHandle]:
    handle = start_in_thread(OfflineModelConfig())
    yield handle
    handle.stop()


def step_of(store: Store, run_id: str, actor: str, nth: int = 0) -> str:
    """The id of the nth step (in creation order) of ``actor`` in the run."""
    with store.read() as connection:
        found = connection.execute(
            select(steps.c.id)
            .where(steps.c.run_id == run_id, steps.c.actor == actor)
            .order_by(steps.c.created_at, steps.c.id)
        ).scalars()
        return list(found)[nth]


def rows_of(store: Store, table: Any, run_id: str) -> int:
    with store.read() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(table).where(table.c.run_id == run_id)
            ).scalar_one()
        )


def calls_in(ledger: str, run_id: str) -> dict[str, int]:
    """How many times each step was called in ``run_id``: {"begin": 1, "step2": 2, ...}."""
    return {
        label.split("/", 1)[1]: n
        for label, n in effects.calls_per_label(ledger).items()
        if label.startswith(f"{run_id}/")
    }


def test_in_place_replay_reruns_only_the_failed_step_and_the_run_succeeds(
    store: Store, start_worker: Callable[..., Worker], ledger: str, tmp_path: Path
) -> None:
    # Given a run whose step 2 failed because the flag was not set
    flag = tmp_path / "flag"
    worker = start_worker()
    run_id = worker.runtime.start_run(OpsStart(ledger=ledger, flag=str(flag))).run_id
    assert wait_for_run(store, run_id) == "failed"
    assert calls_in(ledger, run_id) == {"begin": 1, "step1": 1, "step2": 1}
    # When the flag is set and the run is replayed in place
    flag.touch()
    publish = replay_failed_steps(store, run_id, reason="flag set", operator=Operator("ops"))
    worker.runtime.publish(publish)
    # Then it succeeds; begin and step 1 did not run again, step 2 ran twice
    assert wait_for_run(store, run_id) == "succeeded"
    assert calls_in(ledger, run_id) == {"begin": 1, "step1": 1, "step2": 2, "step3": 1}
    assert read_memory(store, run_id, "total") == (True, 6)


def test_a_fork_with_an_edited_input_reruns_from_that_step_and_leaves_the_original(
    store: Store, start_worker: Callable[..., Worker], ledger: str, tmp_path: Path
) -> None:
    # Given a run that succeeded: begin, steps 1-3 adding 1 + 2 + 3
    flag = tmp_path / "flag"
    flag.touch()
    worker = start_worker()
    run_id = worker.runtime.start_run(OpsStart(ledger=ledger, flag=str(flag))).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    original = {t.name: rows_of(store, t, run_id) for t in (events, steps, memory)}
    step2 = step_of(store, run_id, "tests.actors.ops.ops_step", 1)
    # When it is forked from step 2 with step 2 adding 100 instead of 2
    forked = fork_run(store, run_id, step2, reason="what if", edit={"add": 100})
    worker.runtime.publish(forked.publish)
    # Then the fork is a new run that succeeds with 1 + 100 + 3
    assert forked.run_id != run_id
    assert wait_for_run(store, forked.run_id) == "succeeded"
    assert read_memory(store, forked.run_id, "total") == (True, 104)
    # And its prefix was not executed again: only steps 2 and 3 ran in the fork
    assert calls_in(ledger, forked.run_id) == {"step2": 1, "step3": 1}
    # And the original is untouched
    assert read_memory(store, run_id, "total") == (True, 6)
    assert {t.name: rows_of(store, t, run_id) for t in (events, steps, memory)} == original
    assert calls_in(ledger, run_id) == {"begin": 1, "step1": 1, "step2": 1, "step3": 1}
    detail = run_detail(store, forked.run_id)
    assert detail["run"]["parent_run_id"] == run_id
    assert detail["run"]["forked_from_step_id"] == step2
    # And the divergence is the edited step
    found = divergence(store, forked.run_id)
    assert found is not None and found["what"] == "input" and found["original_step_id"] == step2


def answer_of(store: Store, run_id: str) -> Any:
    [loop] = run_detail(store, run_id)["agents"]
    assert loop["status"] == "finished"
    return loop["output"]


def test_a_recorded_fork_of_an_unchanged_agent_asks_the_model_nothing(
    store: Store,
    start_worker: Callable[..., Worker],
    model: OfflineModelHandle,
    ledger: str,
) -> None:
    # Given an agent run answered by the offline model, with a tool call on the way
    worker = start_worker(model_base_url=model.base_url, model_api_key="offline")
    run_id = worker.runtime.start_run(
        OpsAsk(ledger=ledger, question="Is the queue healthy?")
    ).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    assert model.stats().requests == 2
    assert calls_in(ledger, run_id) == {"lookup": 1}
    model.reset_stats()
    # When it is forked, recorded, from its first step (the agent starts again)
    first = step_of(store, run_id, "tests.actors.ops.ops_ask")
    forked = fork_run(store, run_id, first, reason="check", recorded=True)
    worker.runtime.publish(forked.publish)
    assert wait_for_run(store, forked.run_id) == "succeeded"
    # Then no request reached the model and the tool was not called again
    assert model.stats().requests == 0
    assert calls_in(ledger, forked.run_id) == {}
    # And the fork's answer, model calls and tool results are the original's
    assert answer_of(store, forked.run_id) == answer_of(store, run_id)
    assert rows_of(store, model_calls, forked.run_id) == 2
    assert rows_of(store, tool_calls, forked.run_id) == 1
    # And the two runs do not diverge
    assert divergence(store, forked.run_id) is None


def test_a_recorded_fork_with_a_changed_prompt_diverges_at_the_first_model_call(
    store: Store,
    start_worker: Callable[..., Worker],
    model: OfflineModelHandle,
    ledger: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an agent run answered by the offline model
    worker = start_worker(model_base_url=model.base_url, model_api_key="offline")
    run_id = worker.runtime.start_run(OpsAsk(ledger=ledger, question="Any incidents?")).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    model.reset_stats()
    # When the agent's prompt changes and the run is forked, recorded, from its first step
    monkeypatch.setattr(ops_agent, "instructions", "You answer operators tersely.")
    first = step_of(store, run_id, "tests.actors.ops.ops_ask")
    forked = fork_run(store, run_id, first, reason="new prompt", recorded=True)
    worker.runtime.publish(forked.publish)
    assert wait_for_run(store, forked.run_id) == "succeeded"
    # Then the changed requests went to the model
    assert model.stats().requests == 2
    # And the divergence is the first model call, whose system message changed
    found = divergence(store, forked.run_id)
    assert found is not None
    assert found["what"] == "model_request" and found["actor"] == "baton.agent.model_call"
    assert found["fork_step_id"] == step_of(store, forked.run_id, "baton.agent.model_call")
    assert found["original_step_id"] == step_of(store, run_id, "baton.agent.model_call")
    assert "messages[0] (system)" in found["detail"]


def test_a_fork_with_an_edited_model_output_uses_it_instead_of_asking(
    store: Store,
    start_worker: Callable[..., Worker],
    model: OfflineModelHandle,
    ledger: str,
) -> None:
    # Given an agent run whose first model call chose the lookup tool
    worker = start_worker(model_base_url=model.base_url, model_api_key="offline")
    run_id = worker.runtime.start_run(OpsAsk(ledger=ledger, question="Status?")).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    model.reset_stats()
    # When it is forked from that model call with the answer given outright
    first_call = step_of(store, run_id, "baton.agent.model_call")
    forked = fork_run(
        store,
        run_id,
        first_call,
        reason="skip the lookup",
        edit_output={"content": "All green.", "tool_calls": None},
    )
    worker.runtime.publish(forked.publish)
    assert wait_for_run(store, forked.run_id) == "succeeded"
    # Then the fork finishes with the edited answer, asking the model nothing, calling no tool
    assert answer_of(store, forked.run_id) == "All green."
    assert model.stats().requests == 0
    assert calls_in(ledger, forked.run_id) == {}
    found = divergence(store, forked.run_id)
    assert found is not None and found["what"] == "model_answer"
