"""A commit hands the async steps it makes ready to its own worker: claimed in the same
transaction and run at once, with no message through Redis. (That a worker killed in one of
them loses nothing is shown by the chaos tests' async chains.)"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dramatiq.asyncio import get_event_loop_thread
from prometheus_client import REGISTRY
from sqlalchemy import event, select

from store import Store, run_detail
from store._tables import outbox, step_attempts
from tests.actors import effects
from tests.actors.chaos import AsyncChaosStep
from tests.conftest import wait_for_run, wait_until
from workers import Worker


def commits(path: str) -> float:
    """Async steps' commits this process counted on ``path`` (the worker's metrics)."""
    return REGISTRY.get_sample_value("baton_async_commits_total", {"path": path}) or 0.0


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


@pytest.mark.sqlite
def test_an_async_step_commits_on_the_event_loop_when_the_writer_is_free(
    store: Store, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    # Given a worker, and a note of the thread each commit runs on
    ledger = effects.create(tmp_path / "effects.db")
    worker = start_worker()
    committed_on: list[threading.Thread] = []

    def note(_connection: Any) -> None:
        committed_on.append(threading.current_thread())

    event.listen(store.engine, "commit", note)
    on_loop, in_threads = commits("event_loop"), commits("thread")

    # When a run of three async steps runs on it, with nothing else writing
    run_id = worker.runtime.start_run(AsyncChaosStep(effects=ledger, steps=3, pause=0)).run_id

    # Then it succeeds, and its async steps committed on the event loop itself: no hop to a
    # thread and back for each
    assert wait_for_run(store, run_id) == "succeeded"
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None
    assert sum(thread is loop_thread for thread in committed_on) >= 2
    # And the worker's metrics say where its async steps committed
    # (a commit that met the worker's housekeeping mid-write took a thread instead)
    loop_commits = commits("event_loop") - on_loop
    assert loop_commits >= 2
    assert loop_commits + commits("thread") - in_threads == 3


@pytest.mark.sqlite
def test_an_async_step_whose_commit_finds_the_store_locked_leaves_the_event_loop_free(
    store: Store, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    # Given a worker running the first of two async steps, which commits after 1 s
    ledger = effects.create(tmp_path / "effects.db")
    worker = start_worker()
    in_threads = commits("thread")
    run_id = worker.runtime.start_run(AsyncChaosStep(effects=ledger, steps=2, pause=1.0)).run_id
    wait_until(lambda: len(effects.calls(ledger)) >= 1, 10, "the first step to start")

    # When another process holds SQLite's write lock past the moment it commits
    locker = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        time.sleep(1.5)
        # Then the event loop still answers at once: the commit waits in a thread, not on it
        loop_thread = get_event_loop_thread()
        assert loop_thread is not None
        for _ in range(5):
            began = time.monotonic()
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop_thread.loop).result(2)
            assert time.monotonic() - began < 0.5
            time.sleep(0.1)
        (step,) = run_detail(store, run_id)["steps"]
        assert step["state"] == "running"
        # And the step is still this worker's to renew while that commit waits
        assert step["id"] in worker.runtime._in_flight
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    # And once the lock is released the run succeeds, each step in one attempt
    assert wait_for_run(store, run_id) == "succeeded"
    assert [s["attempts"] for s in run_detail(store, run_id)["steps"]] == [1, 1]
    # And the metrics count the commit that had to wait in a thread
    assert commits("thread") - in_threads >= 1
