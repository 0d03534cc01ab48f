"""The step protocol on the real store: one transaction per state change, deterministic ids,
leases, and an at-most-once committed result."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from store import (
    ClaimedStep,
    Eager,
    LeaseLost,
    NewEvent,
    Route,
    Store,
    StoreUnavailable,
    claim_step,
    commit_and_claim,
    commit_step,
    confirm_published,
    create_run,
    renew_leases,
    short_id,
)
from store._ids import event_id, step_id, trigger_event_id
from store._tables import events, memory, outbox, runs, step_attempts, steps

LEASE = 2.0
ROUTES = {
    "t_steps.start": [Route("t_steps.first", "default", max_retries=2)],
    "t_steps.next": [
        Route("t_steps.second", "default", max_retries=2),
        Route("t_steps.audit", "audit", max_retries=0),
    ],
}


def router(event_type: str) -> Sequence[Route]:
    return ROUTES.get(event_type, [])


def count(store: Store, table: Any, *where: Any) -> int:
    with store.read() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        )


def row_counts(store: Store) -> dict[str, int]:
    tables = {"runs": runs, "events": events, "steps": steps, "outbox": outbox, "memory": memory}
    return {name: count(store, table) for name, table in tables.items()}


def claim(store: Store, step: str, owner: str, now: float | None = None) -> ClaimedStep:
    claimed = claim_step(store, step, owner, LEASE, now=now)
    assert claimed.outcome == "claimed", claimed
    assert claimed.step is not None
    return claimed.step


def commit(store: Store, step: ClaimedStep, owner: str, *emitted: NewEvent, **memory: Any) -> Any:
    return commit_step(
        store,
        step,
        owner,
        emitted=list(emitted),
        fan_out=False,
        memory_writes=memory,
        router=router,
    )


def start(store: Store) -> tuple[str, str]:
    """A new run; returns (run id, id of its first step)."""
    created = create_run(store, NewEvent("t_steps.start", {"n": 1}), router)
    return created.run_id, created.publish[0].step_id


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store's engines execute, with BEGIN and COMMIT markers."""
    log: list[str] = []

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        log.append(statement)

    engines = {id(store.engine): store.engine, id(store.read_engine): store.read_engine}
    hooks = [
        ("before_cursor_execute", on_statement),
        ("begin", lambda _conn: log.append("-- begin")),
        ("commit", lambda _conn: log.append("-- commit")),
    ]
    for engine in engines.values():
        for name, hook in hooks:
            event.listen(engine, name, hook)
    yield log
    for engine in engines.values():
        for name, hook in hooks:
            event.remove(engine, name, hook)


def test_create_run_writes_run_trigger_steps_and_outbox_in_one_transaction(
    store: Store, statements: list[str]
) -> None:
    # When a run is created
    created = create_run(store, NewEvent("t_steps.start", {"n": 1}), router)
    # Then one transaction wrote the run, its trigger event, its step and the step's outbox row
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    tables = {s.split()[2].strip('"') for s in writes if s.upper().startswith("INSERT")}
    assert {"runs", "events", "steps", "outbox"} <= tables
    assert statements.count("-- begin") == 1 and statements.count("-- commit") == 1
    begin, end = statements.index("-- begin"), statements.index("-- commit")
    assert all(begin < statements.index(s) < end for s in writes)
    # And the rows agree with each other and with what is to be published
    run_id = created.run_id
    trigger = trigger_event_id(run_id)
    first = step_id(trigger, "t_steps.first")
    assert created.created and created.subscribed
    assert [(p.step_id, p.actor, p.queue) for p in created.publish] == [
        (first, "t_steps.first", "default")
    ]
    assert count(store, runs, runs.c.id == run_id, runs.c.status == "running") == 1
    assert count(store, events, events.c.id == trigger, events.c.run_id == run_id) == 1
    assert count(store, steps, steps.c.id == first, steps.c.state == "pending") == 1
    assert (
        count(
            store,
            outbox,
            outbox.c.step_id == first,
            outbox.c.message_id == created.publish[0].message_id,
        )
        == 1
    )


def test_a_failed_create_run_writes_nothing(store: Store) -> None:
    # Given a router whose route cannot be stored (an actor name is required)
    def broken(_event_type: str) -> Sequence[Route]:
        return [Route(None, "default", 0)]  # type: ignore[arg-type]

    # When a run is created with it, the step insert fails after the run and event inserts
    with pytest.raises(IntegrityError):
        create_run(store, NewEvent("t_steps.start", {"n": 1}), broken)
    # Then nothing of the run was kept
    assert row_counts(store) == {"runs": 0, "events": 0, "steps": 0, "outbox": 0, "memory": 0}


def test_commit_step_writes_result_events_steps_memory_and_outbox_in_one_transaction(
    store: Store, statements: list[str]
) -> None:
    # Given a claimed first step
    run_id, first = start(store)
    step = claim(store, first, "worker-a")
    statements.clear()
    # When it commits two events and a memory write
    publish = commit(
        store,
        step,
        "worker-a",
        NewEvent("t_steps.next", {"i": 1}),
        NewEvent("t_steps.next", {"i": 2}),
        total=3,
    )
    # Then it was one transaction
    assert statements.count("-- begin") == 1 and statements.count("-- commit") == 1
    # And the step succeeded, its two events, their four steps, their outbox rows and the
    # memory write are all there
    assert count(store, steps, steps.c.id == first, steps.c.state == "succeeded") == 1
    emitted = [event_id(first, 0), event_id(first, 1)]
    assert count(store, events, events.c.id.in_(emitted), events.c.cause_step_id == first) == 2
    children = {step_id(e, a) for e in emitted for a in ("t_steps.second", "t_steps.audit")}
    assert {p.step_id for p in publish} == children
    assert count(store, steps, steps.c.id.in_(children), steps.c.state == "pending") == 4
    assert count(store, outbox, outbox.c.message_id.in_([p.message_id for p in publish])) == 4
    assert count(store, memory, memory.c.run_id == run_id, memory.c.step_id == first) == 1


def test_a_failed_commit_writes_nothing_and_keeps_the_lease(store: Store) -> None:
    # Given a claimed step
    _, first = start(store)
    step = claim(store, first, "worker-a")
    before = row_counts(store)

    # When its commit fails part-way, after the step, events and steps were written
    def explode(_connection: Any) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        commit_step(
            store,
            step,
            "worker-a",
            emitted=[NewEvent("t_steps.next", {"i": 1})],
            fan_out=False,
            memory_writes={"total": 1},
            router=router,
            extra_writes=[explode],
        )
    # Then nothing of it is in the store and the step is still running under the same lease
    assert row_counts(store) == before
    assert (
        count(
            store,
            steps,
            steps.c.id == first,
            steps.c.state == "running",
            steps.c.lease_owner == "worker-a",
        )
        == 1
    )
    # And the same worker can still commit it
    assert len(commit(store, step, "worker-a", NewEvent("t_steps.next", {"i": 1}))) == 2


def test_ids_derive_from_the_cause_so_a_retry_addresses_the_same_rows(store: Store) -> None:
    # Given a step claimed by worker A, whose lease then runs out, and claimed again by B
    _, first = start(store)
    now = time.time()
    lost = claim(store, first, "worker-a", now=now)
    retry = claim(store, first, "worker-b", now=now + LEASE + 1)
    assert (retry.id, retry.attempt, lost.attempt) == (first, 2, 1)
    # When B commits an event
    publish = commit(store, retry, "worker-b", NewEvent("t_steps.next", {"i": 1}))
    # Then the event's id derives from (step, position) and each child step's from (event, actor)
    emitted = event_id(first, 0)
    assert count(store, events, events.c.id == emitted) == 1
    assert sorted(p.step_id for p in publish) == sorted(
        [step_id(emitted, "t_steps.second"), step_id(emitted, "t_steps.audit")]
    )
    # And A's late commit of the same step raises LeaseLost and writes nothing
    before = row_counts(store)
    with pytest.raises(LeaseLost, match="worker-a"):
        commit(store, lost, "worker-a", NewEvent("t_steps.next", {"i": 99}), total=99)
    assert row_counts(store) == before


def test_a_runs_rows_share_the_start_of_its_id_and_sort_after_older_runs(store: Store) -> None:
    # Given a run that has taken two steps, and a run started a few milliseconds later
    older, first = start(store)
    commit(store, claim(store, first, "worker-a"), "worker-a", NewEvent("t_steps.next", {"i": 1}))
    time.sleep(0.005)
    newer, _ = start(store)

    # Then every event and step of a run begins as the run's id does (its creation time)
    def ids_of(run_id: str) -> list[str]:
        with store.read() as connection:
            rows = [*connection.execute(select(events.c.id).where(events.c.run_id == run_id))]
            rows += [*connection.execute(select(steps.c.id).where(steps.c.run_id == run_id))]
        return [row.id for row in rows]

    assert len(ids_of(older)) == 5 and len(ids_of(newer)) == 2
    assert {i[:12] for i in ids_of(older)} == {older[:12]}
    assert {i[:12] for i in ids_of(newer)} == {newer[:12]}
    # So the newer run's rows sort after the older one's: each index on an id grows at its end
    assert max(ids_of(older)) < min(ids_of(newer))
    # And their ends, which listings show, differ within the run
    assert len({short_id(i) for i in ids_of(older)}) == 5


def test_committing_twice_raises_lease_lost_and_writes_nothing(store: Store) -> None:
    # Given a step committed once
    _, first = start(store)
    step = claim(store, first, "worker-a")
    commit(store, step, "worker-a", NewEvent("t_steps.next", {"i": 1}), total=1)
    before = row_counts(store)
    # When the same result is committed again
    with pytest.raises(LeaseLost):
        commit(store, step, "worker-a", NewEvent("t_steps.next", {"i": 1}), total=1)
    # Then nothing more was written
    assert row_counts(store) == before
    assert count(store, step_attempts, step_attempts.c.step_id == first) == 1


def test_a_live_lease_makes_a_second_claim_busy_and_an_expired_one_is_taken_over(
    store: Store,
) -> None:
    # Given a step claimed by worker A with a 2 s lease
    _, first = start(store)
    now = time.time()
    claim(store, first, "worker-a", now=now)
    # When worker B tries while the lease is live
    busy = claim_step(store, first, "worker-b", LEASE, now=now + LEASE / 2)
    # Then it is told the step is busy, and who holds it
    assert busy.outcome == "busy" and "worker-a" in busy.detail
    assert count(store, step_attempts, step_attempts.c.step_id == first) == 1
    # When B tries after the lease expired
    taken = claim(store, first, "worker-b", now=now + LEASE + 0.5)
    # Then B holds it as attempt 2, and A's attempt is marked lost
    assert taken.attempt == 2
    with store.read() as connection:
        attempts = connection.execute(
            select(step_attempts)
            .where(step_attempts.c.step_id == first)
            .order_by(step_attempts.c.attempt)
        ).all()
    assert [(a.attempt, a.worker, a.outcome) for a in attempts] == [
        (1, "worker-a", "lost"),
        (2, "worker-b", None),
    ]
    assert attempts[0].error_type == "LeaseExpired" and "worker-a" in attempts[0].error_message
    # And A, renewing its lease, learns it no longer holds the step
    assert renew_leases(store, "worker-a", [first], LEASE) == {first}
    assert renew_leases(store, "worker-b", [first], LEASE) == set()


def test_a_redelivered_succeeded_step_is_not_run_again_and_only_republishes(
    store: Store,
) -> None:
    # Given a step that committed two children whose publication was not confirmed yet
    _, first = start(store)
    step = claim(store, first, "worker-a")
    publish = commit(store, step, "worker-a", NewEvent("t_steps.next", {"i": 1}))
    # When its message is delivered again
    again = claim_step(store, first, "worker-b", LEASE)
    # Then the handler is not run (no new attempt) and the children are to be re-sent
    assert again.outcome == "succeeded" and again.step is None
    assert sorted(p.message_id for p in again.republish) == sorted(p.message_id for p in publish)
    assert count(store, step_attempts, step_attempts.c.step_id == first) == 1
    # And once the broker confirmed them, a redelivery sends nothing
    confirm_published(store, [p.message_id for p in publish])
    assert claim_step(store, first, "worker-c", LEASE).republish == []
    # And its result is stored once
    assert count(store, events, events.c.cause_step_id == first) == 1


def test_a_delivery_for_an_unknown_step_is_reported_missing(store: Store) -> None:
    # When a message names a step the store does not have
    missing = claim_step(store, "0" * 32, "worker-a", LEASE)
    # Then the claim says so
    assert missing.outcome == "missing" and "0" * 32 in missing.detail


def test_a_lease_taken_over_within_one_worker_drops_the_stale_attempt(store: Store) -> None:
    # Given a step claimed by one worker process, whose thread then stalls past the lease,
    # and claimed again by another thread of the same process (the owner string is the same)
    _, first = start(store)
    now = time.time()
    stale = claim(store, first, "worker-a", now=now)
    current = claim(store, first, "worker-a", now=now + LEASE + 1)
    assert (stale.attempt, current.attempt) == (1, 2)
    # When the stalled attempt commits
    before = row_counts(store)
    with pytest.raises(LeaseLost):
        commit(store, stale, "worker-a", NewEvent("t_steps.next", {"i": 1}))
    # Then nothing of it was written, and the current attempt still holds the step
    assert row_counts(store) == before
    commit(store, current, "worker-a", NewEvent("t_steps.next", {"i": 2}))
    with store.read() as connection:
        outcomes = connection.execute(
            select(step_attempts.c.attempt, step_attempts.c.outcome)
            .where(step_attempts.c.step_id == first)
            .order_by(step_attempts.c.attempt)
        ).all()
        [emitted] = connection.execute(
            select(events.c.data).where(events.c.cause_step_id == first)
        ).scalars()
    assert [tuple(o) for o in outcomes] == [(1, "lost"), (2, "succeeded")]
    assert emitted == {"i": 2}


def while_another_writer_holds_the_lock(
    database_url: str, seconds: float, work: Callable[[], Any]
) -> Any:
    """Run ``work`` in a thread while another connection holds SQLite's write lock."""
    locker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    time.sleep(seconds)
    locker.execute("COMMIT")
    locker.close()
    thread.join(timeout=30)
    [result] = results
    return result


@pytest.mark.sqlite
def test_a_claim_that_waited_for_the_write_lock_gets_a_lease_from_when_it_got_it(
    store: Store, database_url: str
) -> None:
    # Given a pending step, and a claim that must wait longer than a lease for the write lock
    _, first = start(store)
    lease = 1.5
    claimed = while_another_writer_holds_the_lock(
        database_url, lease + 0.5, lambda: claim_step(store, first, "worker-a", lease)
    )
    assert claimed.outcome == "claimed"
    # Then its lease runs from when it was granted: a redelivery right now finds it busy
    assert claim_step(store, first, "worker-b", lease).outcome == "busy"


def commit_taking_second(
    store: Store, step: ClaimedStep, lease: float, prepare: Callable[[Any, ClaimedStep], Any]
) -> Any:
    """Commit ``step`` emitting t_steps.next; its worker takes the t_steps.second step."""
    return commit_and_claim(
        store,
        step,
        "worker-a",
        emitted=[NewEvent("t_steps.next", {"i": 2})],
        fan_out=False,
        memory_writes={},
        router=router,
        eager=Eager(
            "worker-a",
            lease,
            lambda actor: actor == "t_steps.second",
            lambda actor: prepare if actor == "t_steps.second" else None,
        ),
    )


@pytest.mark.sqlite
def test_a_step_a_commit_takes_after_waiting_for_the_write_lock_is_leased_from_then(
    store: Store, database_url: str
) -> None:
    # Given a running step, and a commit that takes the next step for its worker but must
    # wait longer than a lease for the write lock
    _, first = start(store)
    lease = 1.5
    step = claim(store, first, "worker-a")
    committed = while_another_writer_holds_the_lock(
        database_url,
        lease + 0.5,
        lambda: commit_taking_second(store, step, lease, lambda connection, step: None),
    )
    [taken] = committed.claimed
    # Then the taken step's lease runs from the commit: a delivery right now finds it busy
    assert claim_step(store, taken.id, "worker-b", lease).outcome == "busy"


def test_a_preparer_that_fails_leaves_its_step_unprepared_and_the_commit_whole(
    store: Store,
) -> None:
    # Given a running step whose commit takes the next step, whose preparer raises
    run_id, first = start(store)
    step = claim(store, first, "worker-a")

    def broken(connection: Any, taken: ClaimedStep) -> Any:
        raise KeyError("seq")

    # When it commits
    committed = commit_taking_second(store, step, LEASE, broken)
    # Then the commit stands, and the taken step runs unprepared (it reads for itself)
    [taken] = committed.claimed
    assert taken.prepared is None
    assert {s.id: s.state for s in store_steps(store, run_id)} == {
        first: "succeeded",
        taken.id: "running",
        **{p.step_id: "pending" for p in committed.publish},
    }


def test_a_preparer_the_store_refuses_fails_the_commit_and_writes_nothing(
    store: Store,
) -> None:
    # Given a running step whose commit takes the next step, whose preparer's read fails
    run_id, first = start(store)
    step = claim(store, first, "worker-a")
    before = row_counts(store)

    def refused(connection: Any, taken: ClaimedStep) -> Any:
        return connection.execute(text("SELECT * FROM no_such_table")).all()

    # When it commits, the commit fails as a whole (as the store reports it: SQLite's error
    # reads as the store being unusable, PostgreSQL's as the statement's): nothing is written
    with pytest.raises((StoreUnavailable, DBAPIError)):
        commit_taking_second(store, step, LEASE, refused)
    assert row_counts(store) == before
    assert {s.id: s.state for s in store_steps(store, run_id)} == {first: "running"}


def store_steps(store: Store, run_id: str) -> list[Any]:
    with store.read() as connection:
        return list(connection.execute(select(steps).where(steps.c.run_id == run_id)))


@pytest.mark.sqlite
def test_a_renewal_that_waited_for_the_write_lock_extends_the_lease_from_then(
    store: Store, database_url: str
) -> None:
    # Given a claimed step, and a renewal that must wait longer than a lease for the lock
    _, first = start(store)
    lease = 1.5
    claim_step(store, first, "worker-a", lease)
    lost = while_another_writer_holds_the_lock(
        database_url, lease + 0.5, lambda: renew_leases(store, "worker-a", [first], lease)
    )
    # Then the worker still holds the step, and a redelivery right now finds it busy
    assert lost == set()
    assert claim_step(store, first, "worker-b", lease).outcome == "busy"
