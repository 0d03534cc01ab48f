"""Chaos on real `baton worker` processes, a real Valkey and the real store: workers SIGKILLed at
random, Redis wiped and restarted, the database locked by another writer. Every run completes
and every step's keyed side effect is applied exactly once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis

from baton._valkey import EmbeddedValkey
from store import RUN_FINISHED, Store, run_detail, run_status
from tests.actors import effects
from tests.actors.chaos import AsyncChaosStep, ChaosStep, SlowStep
from tests.conftest import FAST, wait_for_run, wait_until
from workers import Runtime

MODULE = "tests.actors.chaos"
Spawn = Callable[..., subprocess.Popen[bytes]]


def finished(store: Store, run_ids: Iterable[str]) -> int:
    return sum(run_status(store, run_id) in RUN_FINISHED for run_id in run_ids)


def wait_for_runs(store: Store, run_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while finished(store, run_ids) < len(run_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {run_id: str(run_status(store, run_id)) for run_id in run_ids}


def kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def all_attempts(store: Store, run_ids: Iterable[str]) -> list[dict[str, Any]]:
    return [
        attempt
        for run_id in run_ids
        for step in run_detail(store, run_id)["steps"]
        for attempt in step["attempt_history"]
    ]


def assert_attempts_account_for_every_step(store: Store, run_ids: Iterable[str]) -> None:
    """Every attempt ended, and each succeeded step has one succeeded attempt: its last."""
    for run_id in run_ids:
        for step in run_detail(store, run_id)["steps"]:
            history = step["attempt_history"]
            assert [a["attempt"] for a in history] == list(range(1, step["attempts"] + 1)), step
            assert all(a["outcome"] is not None for a in history), history
            if step["state"] == "succeeded":
                assert [a["outcome"] for a in history].count("succeeded") == 1, history
                assert history[-1]["outcome"] == "succeeded", history


def assert_each_step_applied_once(
    store: Store, ledger: str, run_ids: list[str], steps: int
) -> None:
    """Exactly one side effect per step of every run, keyed by the step's idempotency key."""
    applied = effects.effects(ledger)
    expected_labels = {f"{run_id}/{i}" for run_id in run_ids for i in range(1, steps + 1)}
    step_ids = {s["id"] for run_id in run_ids for s in run_detail(store, run_id)["steps"]}
    assert len(applied) == len(run_ids) * steps
    assert sorted(applied.values()) == sorted(expected_labels)
    assert set(applied) == step_ids


@pytest.mark.slow
@pytest.mark.parametrize("chain", [ChaosStep, AsyncChaosStep], ids=["sync", "async"])
def test_workers_sigkilled_at_random_lose_no_step_and_repeat_no_side_effect(
    store: Store,
    make_runtime: Callable[..., Runtime],
    worker_processes: Spawn,
    tmp_path: Path,
    chain: type[ChaosStep] | type[AsyncChaosStep],
) -> None:
    # Given two worker processes, and runs of 10 steps, each step applying a keyed effect
    # (async steps: each worker runs the next step of a chain itself, with no message)
    ledger = effects.create(tmp_path / "effects.db")
    workers = [worker_processes(MODULE), worker_processes(MODULE)]
    runtime = make_runtime()

    def start() -> str:
        return runtime.start_run(chain(effects=ledger, steps=10, pause=0.3)).run_id

    run_ids = [start() for _ in range(8)]
    # When, every 0.5-1 s (or as fast as a replacement starts), a random worker is SIGKILLed
    # and a new one started, 12 times, while 12 more runs arrive, one before each kill
    rng = random.Random(8_675_309)
    unfinished_at_kills = []
    killed_at = time.monotonic()
    for _ in range(12):
        time.sleep(max(0.0, rng.uniform(0.5, 1.0) - (time.monotonic() - killed_at)))
        run_ids.append(start())
        killed_at = time.monotonic()
        kill(workers.pop(rng.randrange(len(workers))))
        unfinished_at_kills.append(len(run_ids) - finished(store, run_ids))
        workers.append(worker_processes(MODULE))
    # Then every kill landed while runs were in flight
    assert len(run_ids) == 20 and min(unfinished_at_kills) > 0
    # And every run succeeds
    statuses = wait_for_runs(store, run_ids, timeout=90)
    assert set(statuses.values()) == {"succeeded"}, statuses
    # And every step's side effect was applied exactly once, though steps were re-run
    assert_each_step_applied_once(store, ledger, run_ids, steps=10)
    calls = effects.calls_per_label(ledger)
    assert sum(calls.values()) > 200 and max(calls.values()) > 1
    # And the killed attempts were found by their expired leases, not by luck
    attempts = all_attempts(store, run_ids)
    lost = [a for a in attempts if a["outcome"] == "lost"]
    assert lost and all(a["error_type"] == "LeaseExpired" for a in lost)
    assert not [a for a in attempts if a["outcome"] == "failed"]
    assert_attempts_account_for_every_step(store, run_ids)


@pytest.mark.slow
def test_a_step_killed_mid_run_runs_again_within_the_lease_and_a_few_seconds(
    store: Store, make_runtime: Callable[..., Runtime], worker_processes: Spawn, tmp_path: Path
) -> None:
    # Given two workers and a step that sleeps 30 s on its first attempt
    ledger = effects.create(tmp_path / "effects.db")
    workers = {p.pid: p for p in (worker_processes(MODULE), worker_processes(MODULE))}
    run_id = make_runtime().start_run(SlowStep(effects=ledger, pause=30)).run_id
    [(_, _, attempt, pid)] = wait_until(lambda: effects.calls(ledger), 15, "the slow step to start")
    assert attempt == 1
    # When the worker running it is SIGKILLed mid-step
    killed_at = time.time()
    kill(workers[pid])
    # Then the step runs again on the other worker within the lease plus a few seconds
    assert wait_for_run(store, run_id, timeout=20) == "succeeded"
    [step] = run_detail(store, run_id)["steps"]
    first, second = step["attempt_history"]
    assert (first["outcome"], first["error_type"]) == ("lost", "LeaseExpired")
    assert second["outcome"] == "succeeded"
    recovery = second["started_at"] - killed_at
    assert 0 < recovery <= FAST.lease_seconds + 3, f"recovered in {recovery:.2f} s"
    assert [c[3] for c in effects.calls(ledger)] == [pid, *(p for p in workers if p != pid)]


@pytest.mark.slow
def test_redis_wiped_then_restarted_mid_run_loses_no_run(
    store: Store, baton_env: dict[str, str], worker_processes: Spawn, tmp_path: Path
) -> None:
    # Given a Valkey of this test's own (restarting the session's would disturb other tests)
    valkey = EmbeddedValkey(tmp_path / "own-valkey")
    url = valkey.ensure_running()
    try:
        env = {**baton_env, "BATON_REDIS_URL": url}
        # And two workers with few threads, so most messages wait in Redis, not in a worker
        for _ in range(2):
            worker_processes(MODULE, threads=2, env=env)
        ledger = effects.create(tmp_path / "effects.db")
        runtime = Runtime(store, url, FAST)
        run_ids = [
            runtime.start_run(ChaosStep(effects=ledger, steps=6, pause=0.2)).run_id
            for _ in range(16)
        ]
        client = redis.Redis.from_url(url)
        wait_until(lambda: len(effects.effects(ledger)) >= 8, 30, "the runs to get going")
        # When Redis is wiped while messages are queued in it
        assert client.llen("baton:default") > 0
        client.flushall()
        # Then the runs go on: the reconciler re-publishes the lost steps from the store
        progress = len(effects.effects(ledger))
        wait_until(
            lambda: len(effects.effects(ledger)) >= progress + 16, 30, "progress after the wipe"
        )
        # When Valkey is then stopped and started again
        valkey.stop()
        time.sleep(1.0)
        assert valkey.ensure_running() == url
        # Then every run succeeds and every step was applied exactly once
        statuses = wait_for_runs(store, run_ids, timeout=90)
        assert set(statuses.values()) == {"succeeded"}, statuses
        assert_each_step_applied_once(store, ledger, run_ids, steps=6)
        assert_attempts_account_for_every_step(store, run_ids)
        runtime.broker.close()
    finally:
        valkey.stop()


@pytest.mark.slow
@pytest.mark.sqlite
def test_a_database_locked_by_another_writer_fails_no_step(
    store: Store,
    database_url: str,
    make_runtime: Callable[..., Runtime],
    worker_processes: Spawn,
    tmp_path: Path,
) -> None:
    # Given two workers making progress on 8 runs of 10 steps
    ledger = effects.create(tmp_path / "effects.db")
    for _ in range(2):
        worker_processes(MODULE)
    runtime = make_runtime()
    run_ids = [
        runtime.start_run(ChaosStep(effects=ledger, steps=10, pause=0.1)).run_id for _ in range(8)
    ]
    wait_until(lambda: len(effects.effects(ledger)) >= 8, 30, "the runs to get going")
    # When another process holds SQLite's write lock for 3 s, longer than a lease
    locker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    committed_before = succeeded_steps(store, run_ids)
    time.sleep(3)
    # Then no step could commit meanwhile (the lock held), but readers were not blocked
    assert succeeded_steps(store, run_ids) == committed_before
    locker.execute("COMMIT")
    locker.close()
    # And once it is released every run succeeds, with no failed attempt
    statuses = wait_for_runs(store, run_ids, timeout=60)
    assert set(statuses.values()) == {"succeeded"}, statuses
    assert [a for a in all_attempts(store, run_ids) if a["outcome"] == "failed"] == []
    assert_attempts_account_for_every_step(store, run_ids)
    assert_each_step_applied_once(store, ledger, run_ids, steps=10)


def succeeded_steps(store: Store, run_ids: Iterable[str]) -> int:
    return sum(
        step["state"] == "succeeded"
        for run_id in run_ids
        for step in run_detail(store, run_id)["steps"]
    )
