"""A commit hands the async steps it makes ready to its own worker: claimed in the same
transaction and run at once, with no message through Redis. (That a worker killed in one of
them loses nothing is shown by the chaos tests' async chains.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from store import Store, run_detail
from store._tables import outbox, step_attempts
from tests.actors import effects
from tests.actors.chaos import AsyncChaosStep
from tests.conftest import wait_for_run
from workers import Worker


def test_an_async_chain_continues_on_the_worker_that_committed_each_step(
    store: Store, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    # Given a worker, and a run of five async steps
    ledger = effects.create(tmp_path / "effects.db")
    worker = start_worker()

    # When the run is started (its first step goes through Redis, as every trigger's does)
    run_id = worker.runtime.start_run(AsyncChaosStep(effects=ledger, steps=5, pause=0)).run_id

    # Then it succeeds, each step run once, in order
    assert wait_for_run(store, run_id) == "succeeded"
    steps = sorted(run_detail(store, run_id)["steps"], key=lambda s: s["created_at"])
    assert [s["attempts"] for s in steps] == [1] * 5
    assert sorted(effects.effects(ledger).values()) == [f"{run_id}/{i}" for i in range(1, 6)]
    # And every step after the first was claimed by the commit before it, for this worker:
    # no message was sent for it, and no outbox row is left
    assert steps[0]["message_id"] is not None
    assert [s["message_id"] for s in steps[1:]] == [None] * 4
    with store.read() as connection:
        workers = set(connection.execute(select(step_attempts.c.worker)).scalars())
        assert connection.execute(select(outbox)).first() is None
    assert workers == {worker.runtime.owner}


def test_a_worker_that_is_stopping_sends_what_follows_through_the_broker(
    store: Store, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    # Given a worker that has begun to stop (its drain must end, so it takes nothing more)
    ledger = effects.create(tmp_path / "effects.db")
    worker = start_worker()
    worker.runtime.runs_next_steps = False

    # When a run of three async steps runs on it
    run_id = worker.runtime.start_run(AsyncChaosStep(effects=ledger, steps=3, pause=0)).run_id

    # Then each step after the first got a message, for any worker to take
    assert wait_for_run(store, run_id) == "succeeded"
    steps = run_detail(store, run_id)["steps"]
    assert len(steps) == 3 and all(s["message_id"] is not None for s in steps)
