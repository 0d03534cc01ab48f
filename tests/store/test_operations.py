"""Operations on the real store: replay and cancel recorded with the change they make, forks
that copy exactly the causal past of a step, bulk selection, and runs compared step by step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select, update

from store import (
    ClaimedStep,
    InvalidState,
    NewEvent,
    Operator,
    Route,
    RunSelection,
    Store,
    cancel_run,
    claim_step,
    close_operation,
    commit_step,
    count_runs,
    create_run,
    diff_runs,
    divergence,
    fail_step,
    fork_run,
    open_operation,
    operation_detail,
    read_memory,
    replay_failed_steps,
    run_status,
    select_runs,
)
from store._ids import legacy_event_id, legacy_step_id
from store._tables import (
    events,
    join_arrivals,
    memory,
    operations,
    outbox,
    runs,
    step_attempts,
    steps,
)

ROUTES = {
    # A chain: begin -> step (i = 1..3) -> done; and a fan-out of two parts joined.
    "t_opstore.start": [Route("t_opstore.begin", "default", max_retries=0)],
    "t_opstore.step": [Route("t_opstore.step", "default", max_retries=0)],
    "t_opstore.fan": [Route("t_opstore.split", "default", max_retries=0)],
    "t_opstore.part": [Route("t_opstore.part", "default", max_retries=0)],
    "t_opstore.part_done": [Route("t_opstore.join", "default", max_retries=0, join=True)],
}


def router(event_type: str) -> Sequence[Route]:
    return ROUTES.get(event_type, [])


def claim(store: Store, step_id: str) -> ClaimedStep:
    claimed = claim_step(store, step_id, "worker-a", 5.0)
    assert claimed.outcome == "claimed", claimed
    assert claimed.step is not None
    return claimed.step


def run_step(
    store: Store,
    step_id: str,
    *emitted: NewEvent,
    memory_writes: dict[str, Any] | None = None,
    fan_out: bool = False,
) -> list[Any]:
    """Claim a step and commit it; returns what it caused."""
    return commit_step(
        store,
        claim(store, step_id),
        "worker-a",
        emitted=list(emitted),
        fan_out=fan_out,
        memory_writes=memory_writes or {},
        router=router,
    )


def count(store: Store, table: Any, *where: Any) -> int:
    with store.read() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        )


def all_rows(store: Store, table: Any, *where: Any) -> list[Any]:
    with store.read() as connection:
        return list(connection.execute(select(table).where(*where)).all())


def chain(store: Store) -> tuple[str, list[str]]:
    """A finished chain: begin, step 1, 2, 3, each adding to the memory's total; returns the
    run id and its step ids in order."""
    created = create_run(store, NewEvent("t_opstore.start", {"n": 3}), router)
    order = [created.publish[0].step_id]
    caused = run_step(
        store, order[0], NewEvent("t_opstore.step", {"i": 1}), memory_writes={"total": 0}
    )
    for i in (1, 2, 3):
        order.append(caused[0].step_id)
        following = [NewEvent("t_opstore.step", {"i": i + 1})] if i < 3 else []
        caused = run_step(
            store,
            order[-1],
            *following,
            memory_writes={"total": i * (i + 1) // 2, f"seen{i}": True},
        )
    assert run_status(store, created.run_id) == "succeeded"
    return created.run_id, order


def failed_run(store: Store) -> tuple[str, str]:
    """A run whose step 1 failed for good; returns the run and that step."""
    created = create_run(store, NewEvent("t_opstore.start", {}), router)
    [step1] = run_step(store, created.publish[0].step_id, NewEvent("t_opstore.step", {"i": 1}))
    fail_step(
        store,
        claim(store, step1.step_id),
        "worker-a",
        error_type="PaymentDown",
        error_message="down",
        traceback="",
        retry_in_ms=None,
    )
    assert run_status(store, created.run_id) == "failed"
    return created.run_id, step1.step_id


def test_a_replay_is_recorded_with_the_change_it_makes_and_a_refused_one_records_nothing(
    store: Store,
) -> None:
    # Given a failed run
    run_id, failed = failed_run(store)
    # When an operator replays it
    operator = Operator(actor="alice")
    publish = replay_failed_steps(store, run_id, reason="API back", operator=operator)
    # Then the operation says who, why, what and how it went
    assert [p.step_id for p in publish] == [failed]
    recorded = operation_detail(store, operator.operation_id)
    assert (recorded["kind"], recorded["actor"], recorded["reason"], recorded["status"]) == (
        "replay",
        "alice",
        "API back",
        "succeeded",
    )
    assert recorded["parameters"] == {"run_id": run_id, "step_id": None, "mode": "in_place"}
    assert recorded["outcome"]["replayed_steps"] == [failed]
    # And the run's log names the operation
    [logged] = all_rows(
        store, events, events.c.run_id == run_id, events.c.type == "baton.run.replayed"
    )
    assert logged.data["operation"] == operator.operation_id and logged.data["by"] == "alice"
    # When the now running run is replayed again, it is refused and nothing more is recorded
    with pytest.raises(InvalidState, match="running"):
        replay_failed_steps(store, run_id, reason="again", operator=Operator(actor="alice"))
    assert count(store, operations) == 1


def test_a_cancel_is_recorded_as_an_operation(store: Store) -> None:
    # Given a live run
    created = create_run(store, NewEvent("t_opstore.start", {}), router)
    # When it is canceled by an operator
    operator = Operator(actor="bob")
    cancel_run(store, created.run_id, "customer withdrew", operator=operator)
    # Then the run is canceled and the operation records it
    assert run_status(store, created.run_id) == "canceled"
    recorded = operation_detail(store, operator.operation_id)
    assert (recorded["kind"], recorded["actor"], recorded["status"]) == (
        "cancel",
        "bob",
        "succeeded",
    )
    assert recorded["outcome"] == {
        "run_id": created.run_id,
        "was": "running",
        "status": "canceled",
        "steps_canceled": 1,
    }


def test_a_fork_from_a_middle_step_copies_its_past_and_runs_the_rest_again(store: Store) -> None:
    # Given a finished chain: begin, step 1, step 2, step 3
    run_id, (begin, step1, step2, step3) = chain(store)
    before = {
        t.name: count(store, t, t.c.run_id == run_id)
        for t in (events, steps, memory, step_attempts)
    }
    # When it is forked from step 2 with an edited input
    forked = fork_run(
        store, run_id, step2, reason="try i=20", operator=Operator(actor="carol"), edit={"i": 20}
    )
    fork = forked.run_id
    # Then a new run links to its parent and the step it was forked from
    run = all_rows(store, runs, runs.c.id == fork)[0]
    assert (run.parent_run_id, run.forked_from_step_id, run.recorded) == (run_id, step2, False)
    # And begin and step 1 are copied as succeeded history, each knowing its original
    copies = {r.origin_step_id: r for r in all_rows(store, steps, steps.c.run_id == fork)}
    assert set(copies) == {begin, step1, step2}
    assert copies[begin].state == copies[step1].state == "succeeded"
    assert copies[begin].id != begin and copies[begin].attempts == 1
    assert count(store, step_attempts, step_attempts.c.run_id == fork) == 2
    # And step 2 runs again, alone, with its input edited
    assert [p.step_id for p in forked.publish] == [forked.step_id] == [copies[step2].id]
    assert copies[step2].state == "pending"
    [edited] = all_rows(store, events, events.c.id == copies[step2].event_id)
    assert edited.data == {"i": 20}
    assert count(store, outbox, outbox.c.run_id == fork) == 1
    # And its memory is what begin and step 1 wrote: not what step 2 and 3 did later
    assert read_memory(store, fork, "total") == (True, 1)
    assert read_memory(store, fork, "seen1") == (True, True)
    assert read_memory(store, fork, "seen2") == (False, None)
    # And the parent is untouched
    after = {
        t.name: count(store, t, t.c.run_id == run_id)
        for t in (events, steps, memory, step_attempts)
    }
    assert after == before and run_status(store, run_id) == "succeeded"
    # When the fork's step 2 runs, the step it causes knows its counterpart in the parent
    [next_step] = run_step(store, forked.step_id, NewEvent("t_opstore.step", {"i": 21}))
    assert all_rows(store, steps, steps.c.id == next_step.step_id)[0].origin_step_id == step3
    run_step(store, next_step.step_id)
    assert run_status(store, fork) == "succeeded"
    # And the fork parts from its parent at step 2, whose input was edited
    found = divergence(store, fork)
    assert found is not None
    assert (found["fork_step_id"], found["original_step_id"], found["what"]) == (
        forked.step_id,
        step2,
        "input",
    )
    assert found["detail"] == "input changed: i"
    # And the operation records the fork
    recorded = operation_detail(store, forked.operation_id or "")
    assert recorded["kind"] == "fork" and recorded["outcome"]["fork_run_id"] == fork
    assert recorded["parameters"]["edit"] == {"i": 20}


def test_a_fork_of_a_run_whose_ids_predate_time_prefixes_finds_its_counterparts(
    store: Store,
) -> None:
    # Given a finished chain whose step 3 (and the event that caused it) has the id it would
    # have had before ids began with their run's time
    run_id, (_, _, step2, step3) = chain(store)
    [caused] = all_rows(store, events, events.c.cause_step_id == step2)
    old_event = legacy_event_id(step2, 0)
    old_step = legacy_step_id(old_event, "t_opstore.step")
    with store.transaction() as connection:
        connection.execute(update(events).where(events.c.id == caused.id).values(id=old_event))
        connection.execute(
            update(steps).where(steps.c.id == step3).values(id=old_step, event_id=old_event)
        )
    # When it is forked from step 2, and the fork's step 2 runs
    forked = fork_run(store, run_id, step2, reason="again", operator=Operator(actor="carol"))
    [next_step] = run_step(store, forked.step_id, NewEvent("t_opstore.step", {"i": 3}))
    # Then the step it causes knows its counterpart in the parent by the parent's own id
    # (a recorded fork reuses that step's model answers and tool results through it)
    assert all_rows(store, steps, steps.c.id == next_step.step_id)[0].origin_step_id == old_step


def test_a_fork_from_one_branch_runs_its_sibling_again_and_the_join_completes(
    store: Store,
) -> None:
    # Given a finished run: split fans out parts a and b, each part's result joins
    created = create_run(store, NewEvent("t_opstore.fan", {}), router)
    parts = run_step(
        store,
        created.publish[0].step_id,
        NewEvent("t_opstore.part", {"name": "a"}),
        NewEvent("t_opstore.part", {"name": "b"}),
        fan_out=True,
    )
    part_a, part_b = (p.step_id for p in parts)
    run_step(store, part_a, NewEvent("t_opstore.part_done", {"name": "a"}))
    [join] = run_step(store, part_b, NewEvent("t_opstore.part_done", {"name": "b"}))
    run_step(store, join.step_id)
    assert run_status(store, created.run_id) == "succeeded"
    # When it is forked from part a
    forked = fork_run(store, created.run_id, part_a, reason="again")
    # Then only the split is kept; part a and its sibling part b both run again
    fork_steps = {
        r.origin_step_id: r for r in all_rows(store, steps, steps.c.run_id == forked.run_id)
    }
    assert fork_steps[created.publish[0].step_id].state == "succeeded"
    assert {p.step_id for p in forked.publish} == {fork_steps[part_a].id, fork_steps[part_b].id}
    # When both run, the fork's join collects both and knows the parent's join
    new_join = run_step(
        store, fork_steps[part_a].id, NewEvent("t_opstore.part_done", {"name": "a"})
    )
    assert new_join == []
    [ready] = run_step(store, fork_steps[part_b].id, NewEvent("t_opstore.part_done", {"name": "b"}))
    joined = all_rows(store, steps, steps.c.id == ready.step_id)[0]
    assert joined.origin_step_id == join.step_id
    assert count(store, join_arrivals, join_arrivals.c.step_id == ready.step_id) == 2
    run_step(store, ready.step_id)
    assert run_status(store, forked.run_id) == "succeeded"
    # And, the same steps having done the same things, the two runs do not diverge
    assert divergence(store, forked.run_id) is None
    diff = diff_runs(store, created.run_id, forked.run_id)
    assert [row["differences"] for row in diff.rows if row["differences"]] == []
    assert len(diff.rows) == 4


def test_diff_aligns_two_runs_and_names_what_differs(store: Store) -> None:
    # Given a chain and a fork of it whose step 2 was edited
    run_id, (_, _, step2, step3) = chain(store)
    forked = fork_run(store, run_id, step2, reason="edit", edit={"i": 7})
    [after] = run_step(store, forked.step_id, NewEvent("t_opstore.step", {"i": 8}))
    run_step(store, after.step_id)
    # When the two runs are compared
    diff = diff_runs(store, run_id, forked.run_id)
    # Then their four steps line up, and steps 2 and 3 differ in input or output
    assert len(diff.rows) == 4
    by_step = {row["a"]["step_id"]: row["differences"] for row in diff.rows}
    assert "input" in by_step[step2] and "output" in by_step[step2]
    assert "input" in by_step[step3]
    assert diff.a["id"] == run_id and diff.b["parent_run_id"] == run_id


def test_bulk_selection_filters_by_status_actor_error_and_time(store: Store) -> None:
    # Given three failed runs and a live one
    failed = [failed_run(store)[0] for _ in range(3)]
    create_run(store, NewEvent("t_opstore.start", {}), router)
    # Then the selection finds the failed runs by their failed step's actor and error
    everything = RunSelection(status="failed")
    assert select_runs(store, everything) == failed and count_runs(store, everything) == 3
    by_error = RunSelection(status="failed", actor="t_opstore.step", error_type="PaymentDown")
    assert select_runs(store, by_error) == failed
    assert count_runs(store, RunSelection(status="failed", error_type="Other")) == 0
    assert count_runs(store, RunSelection(status="failed", actor="t_opstore.begin")) == 0
    assert count_runs(store, RunSelection(status="failed", limit=2)) == 2
    assert count_runs(store, RunSelection(status="running")) == 1
    assert count_runs(store, RunSelection(status="failed", since=9e12)) == 0
    # And a bulk operation is opened, then closed with every run's outcome
    operator = open_operation(
        store, kind="bulk_replay", actor="dave", reason="fixed", parameters=everything.parameters()
    )
    assert operation_detail(store, operator.operation_id)["status"] == "running"
    for run_id in failed:
        replay_failed_steps(store, run_id, reason="fixed", operator=operator)
    close_operation(store, operator.operation_id, status="succeeded", outcome={"runs": failed})
    recorded = operation_detail(store, operator.operation_id)
    assert recorded["status"] == "succeeded" and recorded["outcome"] == {"runs": failed}
    assert recorded["parameters"] == {"status": "failed"}
    # And only the bulk operation was recorded; each run's log names it
    assert count(store, operations) == 1
    for run_id in failed:
        [logged] = all_rows(
            store, events, events.c.run_id == run_id, events.c.type == "baton.run.replayed"
        )
        assert logged.data["operation"] == operator.operation_id
