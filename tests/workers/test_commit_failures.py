"""A step whose commit the store refuses: the attempt is recorded as failed, keeping what it
must keep, and retried with backoff, like a handler that raised (not left to its lease)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Connection, text

from events import Event
from store import Store, run_detail
from tests.conftest import wait_for_run
from workers import Context, Worker, actor


class Refused(Event, type="t_commit.refused"):
    """Run one step whose commit fails ``failures`` times."""

    failures: int


class RefusedAsync(Event, type="t_commit.refused_async"):
    failures: int


def _refused_on_early_attempts(event: Refused | RefusedAsync, ctx: Context) -> None:
    """The attempt's commit hits a statement the store rejects until attempt failures + 1;
    a row kept ``even_on_failure`` is written by whichever transaction ends the attempt."""

    def kept(connection: Connection) -> None:
        connection.execute(
            text(
                "INSERT INTO memory (run_id, key, value, step_id, created_at) "
                "VALUES (:run, :key, '1', :step, 0)"
            ),
            {"run": ctx.run_id, "key": f"kept-{ctx.attempt}", "step": ctx.step_id},
        )

    def rejected(connection: Connection) -> None:
        if ctx.attempt <= event.failures:
            connection.execute(text("SELECT * FROM no_such_table"))

    ctx.defer_write(kept, even_on_failure=True)
    ctx.defer_write(rejected)


@actor(on=Refused, retries=3)
def refused(event: Refused, ctx: Context) -> None:
    _refused_on_early_attempts(event, ctx)


@actor(on=RefusedAsync, retries=3)
async def refused_async(event: RefusedAsync, ctx: Context) -> None:
    _refused_on_early_attempts(event, ctx)


def _kept_keys(store: Store, run_id: str) -> set[str]:
    with store.read() as connection:
        rows = connection.execute(
            text("SELECT key FROM memory WHERE run_id = :run"), {"run": run_id}
        )
        return {row.key for row in rows}


@pytest.mark.parametrize("kind", [Refused, RefusedAsync], ids=["sync", "async"])
def test_a_commit_the_store_refuses_is_a_failed_attempt_retried_with_what_it_kept(
    store: Store, start_worker: Callable[..., Worker], kind: type[Refused]
) -> None:
    # Given a worker, and a step whose commit the store refuses on its first two attempts
    worker = start_worker()
    # When its run runs
    run_id = worker.runtime.start_run(kind(failures=2)).run_id
    # Then the run succeeds on the third attempt: the two refused commits were failed
    # attempts, with the store's error, each followed by a retry
    assert wait_for_run(store, run_id, timeout=30) == "succeeded"
    [step] = run_detail(store, run_id)["steps"]
    outcomes = [a["outcome"] for a in step["attempt_history"]]
    assert outcomes == ["failed", "failed", "succeeded"], step["attempt_history"]
    assert "no_such_table" in (step["attempt_history"][0]["error_message"] or "")
    # And what each attempt keeps whatever happens was written once per attempt, by the
    # transaction that recorded its failure or its commit
    assert _kept_keys(store, run_id) == {"kept-1", "kept-2", "kept-3"}


def test_a_commit_refused_every_time_fails_the_run_after_its_retries(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a step whose commit the store refuses on every attempt (3 retries)
    worker = start_worker()
    run_id = worker.runtime.start_run(RefusedAsync(failures=99)).run_id
    # Then the run fails once its retries are spent, instead of running the step forever
    assert wait_for_run(store, run_id, timeout=30) == "failed"
    [step] = run_detail(store, run_id)["steps"]
    assert [a["outcome"] for a in step["attempt_history"]] == ["failed"] * 4
