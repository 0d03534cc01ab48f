"""Fan-out and join on the real store: N arrivals make the join ready exactly once, even when
the N steps commit at the same moment from different threads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from store import (
    ClaimedStep,
    NewEvent,
    Publish,
    Route,
    Store,
    claim_step,
    commit_step,
    create_run,
    run_status,
)
from store._tables import join_arrivals, steps

LEASE = 30.0
WIDTH = 8
ROUTES = {
    "t_joins.batch": [Route("t_joins.split", "default", 0)],
    "t_joins.item": [Route("t_joins.work", "default", 0)],
    "t_joins.item_done": [Route("t_joins.gather", "default", 0, join=True)],
}


def router(event_type: str) -> Sequence[Route]:
    return ROUTES.get(event_type, [])


def claim(store: Store, step_id: str, owner: str) -> ClaimedStep:
    claimed = claim_step(store, step_id, owner, LEASE)
    assert claimed.outcome == "claimed", claimed
    assert claimed.step is not None
    return claimed.step


def commit(
    store: Store, step: ClaimedStep, owner: str, emitted: list[NewEvent], *, fan_out: bool = False
) -> list[Publish]:
    return commit_step(
        store, step, owner, emitted=emitted, fan_out=fan_out, memory_writes={}, router=router
    )


def fan_out(store: Store) -> tuple[str, ClaimedStep, list[str]]:
    """A run whose first step fanned out WIDTH items; returns (run, that step, item steps)."""
    created = create_run(store, NewEvent("t_joins.batch", {"size": WIDTH}), router)
    split = claim(store, created.publish[0].step_id, "splitter")
    items = [NewEvent("t_joins.item", {"index": i}) for i in range(WIDTH)]
    publish = commit(store, split, "splitter", items, fan_out=True)
    return created.run_id, split, [p.step_id for p in publish]


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_arrivals_make_the_join_ready_exactly_once(store: Store, round_: int) -> None:
    # Given a run that fanned out 8 items, each claimed by its own worker
    run_id, split, item_steps = fan_out(store)
    claimed = [claim(store, step, f"worker-{i}") for i, step in enumerate(item_steps)]
    # When all 8 commit their result at the same moment from 8 threads
    barrier = threading.Barrier(WIDTH)
    results: dict[int, list[Publish]] = {}
    errors: list[BaseException] = []

    def finish(index: int) -> None:
        try:
            done = [NewEvent("t_joins.item_done", {"index": index})]
            barrier.wait(timeout=10)
            results[index] = commit(store, claimed[index], f"worker-{index}", done)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(WIDTH)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # Then exactly one commit made the join ready, and it says which step that is
    ready = [p for publish in results.values() for p in publish]
    assert len(results) == WIDTH
    assert [p.actor for p in ready] == ["t_joins.gather"]
    join_step = ready[0].step_id
    with store.read() as connection:
        row = connection.execute(select(steps).where(steps.c.id == join_step)).one()
        arrivals = connection.execute(
            select(join_arrivals).where(join_arrivals.c.step_id == join_step)
        ).all()
    assert (row.state, row.join_arrived, row.join_expected) == ("pending", WIDTH, WIDTH)
    assert len(arrivals) == WIDTH
    # And the join step, once claimed, receives all 8 events of the group
    gather = claim(store, join_step, "gatherer")
    assert gather.join
    assert sorted(e.data["index"] for e in gather.events) == list(range(WIDTH))
    assert all(e.groups[-1] == [split.id, WIDTH] for e in gather.events)
    # And committing it finishes the run
    commit(store, gather, "gatherer", [])
    assert run_status(store, run_id) == "succeeded"


def test_a_join_still_collecting_when_nothing_else_can_run_fails_the_run(store: Store) -> None:
    # Given a fan-out of 8 where one item ends without sending its result
    run_id, _, item_steps = fan_out(store)
    for index, step in enumerate(item_steps):
        emitted: list[Any] = [] if index == 0 else [NewEvent("t_joins.item_done", {"index": index})]
        commit(store, claim(store, step, "worker"), "worker", emitted)
    # Then the run fails, saying the join can never fire
    assert run_status(store, run_id) == "failed"
    from store import run_detail

    error = run_detail(store, run_id)["run"]["error"]
    assert "t_joins.gather" in error and "7 of 8" in error
