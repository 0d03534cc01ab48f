"""The step protocol: claim with a lease, then commit one outcome in one transaction."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import DBAPIError

from store import _hot as hot
from store import _ids
from store._appending import (
    add_to_outbox,
    append_events,
    insert_on_conflict_ignore,
    lock_run,
    mark_run_failed,
    settle_run,
)
from store._engine import Store
from store._errors import LeaseLost
from store._model import (
    RUN_CANCELED,
    RUN_FAILED,
    RUN_RUNNING,
    RUN_WAITING,
    STEP_CANCELED,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RUNNING,
    STEP_SUCCEEDED,
    STEP_WAITING,
    Claim,
    ClaimedStep,
    Committed,
    Eager,
    NewEvent,
    Preparer,
    Publish,
    Router,
    StoredEvent,
)
from store._tables import (
    events,
    join_arrivals,
    memory,
    outbox,
    step_attempts,
    steps,
    waits,
)

_logger = logging.getLogger("baton.store")

# A delivery that arrives a little before the step's retry time is still taken: the broker's
# delay queue and this machine's clock are not exact to the millisecond.
_EARLY_TOLERANCE_SECONDS = 0.05


def claim_step(
    store: Store,
    step_id: str,
    owner: str,
    lease_seconds: float,
    now: float | None = None,
    *,
    prepare: Preparer | None = None,
) -> Claim:
    """Take the lease of a step, or say why this delivery must not run it. ``prepare`` reads
    what the handler needs in the same transaction (``ClaimedStep.prepared``)."""
    with store.transaction() as connection:
        # Read the clock once the write lock is ours: a claim that waited for it must not be
        # granted a lease that has already run out.
        now = time.time() if now is None else now
        read = hot.CLAIM_READ_LOCKED if connection.dialect.name == "postgresql" else hot.CLAIM_READ
        row = read.run(connection, {"id": step_id}).first()
        if row is None:
            return Claim("missing", detail=f"no step {step_id!r} in the store")
        run = row
        run_status = row.run_status
        if run_status == RUN_CANCELED:
            if row.state not in (STEP_SUCCEEDED, STEP_FAILED, STEP_CANCELED):
                _cancel_step(connection, step_id, now)
            return Claim("canceled", detail="the run was canceled")
        if row.state == STEP_SUCCEEDED:
            return Claim("succeeded", republish=_pending_children(connection, step_id))
        if run_status == RUN_FAILED and row.state == STEP_PENDING:
            # A failed run stops where it is: its pending steps wait for an operator's replay,
            # which sends them again. No more model calls or side effects until then.
            return Claim("halted", detail="the run failed; `baton replay` continues it")
        if row.state == STEP_RUNNING and (row.lease_expires_at or 0) >= now:
            return Claim("busy", detail=f"held by {row.lease_owner} until {row.lease_expires_at}")
        if row.state not in (STEP_PENDING, STEP_RUNNING):
            return Claim("finished", detail=f"step is {row.state}")
        if row.state == STEP_PENDING and row.available_at > now + _EARLY_TOLERANCE_SECONDS:
            return Claim("early", available_in_ms=int((row.available_at - now) * 1000))
        taken = hot.CLAIM_TAKE.run(
            connection,
            {"id": step_id, "owner": owner, "expires": now + lease_seconds, "now": now},
        )
        if taken.rowcount != 1:
            return Claim("busy", detail="another delivery claimed it first")
        if row.state == STEP_RUNNING:
            # The previous holder's lease ran out: it died or hung. Say so in its attempt.
            connection.execute(
                update(step_attempts)
                .where(
                    step_attempts.c.step_id == step_id,
                    step_attempts.c.attempt == row.attempts,
                    step_attempts.c.ended_at.is_(None),
                )
                .values(
                    ended_at=now,
                    outcome="lost",
                    error_type="LeaseExpired",
                    error_message=f"worker {row.lease_owner} stopped renewing its lease",
                )
            )
        attempt = row.attempts + 1
        hot.ATTEMPT_START.run(
            connection,
            {
                "step_id": step_id,
                "attempt": attempt,
                "run_id": row.run_id,
                "worker": owner,
                "started_at": now,
            },
        )
        event = StoredEvent(
            row.event_id,
            row.run_id,
            row.event_type,
            hot.json_out(row.event_data),
            hot.json_out(row.event_groups),
            row.event_position,
        )
        arrivals = _load_arrivals(connection, step_id) if row.join_expected is not None else [event]
        claimed = ClaimedStep(
            id=step_id,
            run_id=row.run_id,
            actor=row.actor,
            attempt=attempt,
            # An attempt that parked the step (a wait, a timer) ended without failing: it
            # uses up none of the retries.
            attempts_left=row.max_retries - (attempt - 1 - row.attempt_base - row.parked),
            attempt_base=row.attempt_base,
            traceparent=row.traceparent,
            trace_id=run.trace_id,
            event=event,
            events=arrivals,
            join=row.join_expected is not None,
            available_at=row.available_at,
            origin_step_id=row.origin_step_id,
            recorded=bool(run.recorded),
        )
        return Claim("claimed", step=_prepared(connection, prepare, claimed))


def commit_step(
    store: Store,
    step: ClaimedStep,
    owner: str,
    *,
    emitted: Sequence[NewEvent],
    fan_out: bool,
    memory_writes: Mapping[str, Any],
    router: Router,
    extra_writes: Sequence[Callable[[Connection], None]] = (),
    now: float | None = None,
) -> list[Publish]:
    """Record a step's success with everything it caused, in one transaction.

    ``fan_out`` says the handler returned a list: its events form a group a join can wait on.
    Raises LeaseLost if another worker holds the step now; nothing is written then.
    """
    return commit_and_claim(
        store,
        step,
        owner,
        emitted=emitted,
        fan_out=fan_out,
        memory_writes=memory_writes,
        router=router,
        extra_writes=extra_writes,
        now=now,
    ).publish


def commit_and_claim(
    store: Store,
    step: ClaimedStep,
    owner: str,
    *,
    emitted: Sequence[NewEvent],
    fan_out: bool,
    memory_writes: Mapping[str, Any],
    router: Router,
    extra_writes: Sequence[Callable[[Connection], None]] = (),
    eager: Eager | None = None,
    now: float | None = None,
    wait: bool = True,
) -> Committed:
    """``commit_step``, in which the steps it makes ready that ``eager`` takes are claimed for
    its worker in the same transaction instead of being sent (only while the run runs).
    ``wait=False``: see ``Store.transaction``."""
    now = time.time() if now is None else now
    with store.transaction(wait=wait) as connection:
        run = lock_run(connection, step.run_id)
        canceled = run.status == RUN_CANCELED
        finished = hot.STEP_FINISH.run(
            connection,
            {
                "state": STEP_CANCELED if canceled else STEP_SUCCEEDED,
                "now": now,
                "id": step.id,
                "owner": owner,
                "attempt": step.attempt,
            },
        )
        if finished.rowcount != 1:
            raise _lease_lost(step, owner)
        hot.ATTEMPT_END.run(
            connection,
            {
                "now": now,
                "outcome": "canceled" if canceled else "succeeded",
                "id": step.id,
                "attempt": step.attempt,
            },
        )
        if canceled:
            return Committed([])
        groups = list(step.event.groups)
        if step.join:
            # A join closes the group it collected: what it emits belongs to the enclosing one.
            groups = groups[:-1]
        if fan_out:
            groups = [*groups, [step.id, len(emitted)]]
        committed = append_events(
            connection,
            run_id=step.run_id,
            trace_id=run.trace_id,
            cause_step_id=step.id,
            new_events=emitted,
            groups=groups,
            router=router,
            now=now,
            cause_span_id=_ids.attempt_span_id(step.id, step.attempt),
            cause_origin_step_id=step.origin_step_id,
            # A failed run holds its ready steps for a replay; a waiting one runs them.
            eager=eager if run.status in (RUN_RUNNING, RUN_WAITING) else None,
            recorded=bool(run.recorded),
        )
        write_memory(connection, step.run_id, step.id, memory_writes, now)
        for write in extra_writes:
            write(connection)
        settle_run(connection, step.run_id, run.status, now)
        if eager is None or not committed.claimed:
            return committed
        # Last, so what the steps read includes everything this transaction wrote.
        return Committed(
            committed.publish,
            [_prepared(connection, eager.preparer(s.actor), s) for s in committed.claimed],
        )


def _prepared(connection: Connection, prepare: Preparer | None, step: ClaimedStep) -> ClaimedStep:
    """``step`` with what its actor's preparer read in this transaction, the one that claims
    it (by a delivery, or by the commit before it)."""
    if prepare is None:
        return step
    try:
        return replace(step, prepared=prepare(connection, step))
    except (DBAPIError, sqlite3.Error):
        # The transaction itself is in trouble (on PostgreSQL, aborted): the commit fails,
        # and its worker records that as a failed attempt, retried with backoff.
        raise
    except Exception:
        # Not this transaction's failure: the step reads what it needs itself when it runs,
        # and fails (and is retried) there if it cannot, in an attempt of its own.
        _logger.warning(
            "could not prepare step %s; it reads its inputs itself", step.id, exc_info=True
        )
        return step


def fail_step(
    store: Store,
    step: ClaimedStep,
    owner: str,
    *,
    error_type: str,
    error_message: str,
    traceback: str,
    retry_in_ms: int | None,
    extra_writes: Sequence[Callable[[Connection], None]] = (),
    now: float | None = None,
) -> list[Publish]:
    """Record a failed attempt: schedule the retry, or fail the step and its run for good.
    ``extra_writes`` are what the attempt keeps all the same (a model's answer it paid for)."""
    now = time.time() if now is None else now
    with store.transaction() as connection:
        run = lock_run(connection, step.run_id)
        # After the run's lock, as in a commit: the same order in every transaction.
        for write in extra_writes:
            write(connection)
        if run.status == RUN_CANCELED:
            _finish_step(connection, step, owner, STEP_CANCELED, now)
            _end_attempt(connection, step, "canceled", now)
            return []
        errors = {"error_type": error_type, "error_message": error_message}
        if retry_in_ms is not None:
            message_id = _ids.new_message_id()
            _release_step(
                connection,
                step,
                owner,
                state=STEP_PENDING,
                available_at=now + retry_in_ms / 1000,
                message_id=message_id,
                published_at=now,
                **errors,
            )
            _end_attempt(connection, step, "failed", now, traceback=traceback, **errors)
            retry = Publish(
                message_id,
                step.id,
                step.run_id,
                step.actor,
                _queue_of(connection, step.id),
                step.traceparent,
                delay_ms=retry_in_ms,
            )
            add_to_outbox(connection, [retry], now)
            return [retry]
        _release_step(connection, step, owner, state=STEP_FAILED, finished_at=now, **errors)
        _end_attempt(connection, step, "failed", now, traceback=traceback, **errors)
        mark_run_failed(
            connection,
            step.run_id,
            {
                "step_id": step.id,
                "actor": step.actor,
                "error_type": error_type,
                "message": error_message,
            },
            step.id,
            step.attempt,
            now,
        )
        return []


def park_step(
    store: Store,
    step: ClaimedStep,
    owner: str,
    *,
    wait_names: Sequence[str],
    deadline: float | None,
    extra_writes: Sequence[Callable[[Connection], None]] = (),
    now: float | None = None,
) -> None:
    """Park a step until one of the named signals arrives or its deadline passes, keeping
    ``extra_writes`` (what the attempt learnt so far)."""
    now = time.time() if now is None else now
    with store.transaction() as connection:
        run = lock_run(connection, step.run_id)
        # After the run's lock, as in a commit: the same order in every transaction.
        for write in extra_writes:
            write(connection)
        if run.status == RUN_CANCELED:
            _finish_step(connection, step, owner, STEP_CANCELED, now)
            _end_attempt(connection, step, "canceled", now)
            return
        _release_step(connection, step, owner, state=STEP_WAITING)
        _end_attempt(connection, step, "waiting", now)
        connection.execute(
            insert_on_conflict_ignore(connection, waits),
            [
                {
                    "id": _ids.wait_id(step.id, name),
                    "run_id": step.run_id,
                    "step_id": step.id,
                    "name": name,
                    "state": "open",
                    "deadline": deadline,
                    "created_at": now,
                }
                for name in wait_names
            ],
        )
        settle_run(connection, step.run_id, run.status, now)


def read_wait(store: Store, step_id: str, name: str) -> Any:
    """The wait a step opened under ``name``, or None."""
    with store.read() as connection:
        return connection.execute(
            select(waits.c.state, waits.c.data).where(waits.c.id == _ids.wait_id(step_id, name))
        ).first()


def read_memory(store: Store, run_id: str, key: str) -> tuple[bool, Any]:
    """(found, value) of the newest version of a memory key: one index seek."""
    with store.read() as connection:
        row = connection.execute(
            select(memory.c.value)
            .where(memory.c.run_id == run_id, memory.c.key == key)
            .order_by(memory.c.id.desc())
            .limit(1)
        ).first()
    return (False, None) if row is None else (True, row.value)


def write_memory(
    connection: Connection, run_id: str, step_id: str | None, writes: Mapping[str, Any], now: float
) -> None:
    if writes:
        connection.execute(
            insert(memory),
            [
                {
                    "run_id": run_id,
                    "key": key,
                    "value": value,
                    "step_id": step_id,
                    "created_at": now,
                }
                for key, value in writes.items()
            ],
        )


def renew_leases(
    store: Store, owner: str, step_ids: Sequence[str], lease_seconds: float
) -> set[str]:
    """Extend this worker's leases; returns the ids it no longer holds."""
    if not step_ids:
        return set()
    with store.transaction() as connection:
        # After the write lock, as in claim_step: a renewal that waited must still extend.
        now = time.time()
        connection.execute(
            update(steps)
            .where(
                steps.c.id.in_(step_ids),
                steps.c.lease_owner == owner,
                steps.c.state == STEP_RUNNING,
            )
            .values(lease_expires_at=now + lease_seconds)
        )
        held = connection.execute(
            select(steps.c.id).where(
                steps.c.id.in_(step_ids),
                steps.c.lease_owner == owner,
                steps.c.state == STEP_RUNNING,
            )
        ).scalars()
        return set(step_ids) - set(held)


def _finish_step(
    connection: Connection, step: ClaimedStep, owner: str, state: str, now: float
) -> None:
    _release_step(connection, step, owner, state=state, finished_at=now)


def _release_step(connection: Connection, step: ClaimedStep, owner: str, **values: Any) -> None:
    # The owner names a process; the attempt names this claim. Without it, a thread whose lease
    # expired could commit over a newer claim taken by another thread of the same process.
    done = connection.execute(
        update(steps)
        .where(
            steps.c.id == step.id,
            steps.c.lease_owner == owner,
            steps.c.attempts == step.attempt,
            steps.c.state == STEP_RUNNING,
        )
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    if done.rowcount != 1:
        raise _lease_lost(step, owner)


def _lease_lost(step: ClaimedStep, owner: str) -> LeaseLost:
    return LeaseLost(
        f"step {step.id} ({step.actor}) is no longer held by {owner}: its lease expired and "
        "another worker took it, or the run was replayed; this attempt's result is dropped"
    )


def _end_attempt(
    connection: Connection, step: ClaimedStep, outcome: str, now: float, **values: Any
) -> None:
    connection.execute(
        update(step_attempts)
        .where(step_attempts.c.step_id == step.id, step_attempts.c.attempt == step.attempt)
        .values(ended_at=now, outcome=outcome, **values)
    )


def _cancel_step(connection: Connection, step_id: str, now: float) -> None:
    connection.execute(
        update(steps)
        .where(steps.c.id == step_id)
        .values(state=STEP_CANCELED, lease_owner=None, lease_expires_at=None, finished_at=now)
    )


def _queue_of(connection: Connection, step_id: str) -> str:
    return str(connection.execute(select(steps.c.queue).where(steps.c.id == step_id)).scalar_one())


def _load_arrivals(connection: Connection, step_id: str) -> list[StoredEvent]:
    rows = connection.execute(
        select(events)
        .join(join_arrivals, join_arrivals.c.event_id == events.c.id)
        .where(join_arrivals.c.step_id == step_id)
        .order_by(events.c.cause_step_id, events.c.position, events.c.id)
    ).all()
    return [StoredEvent(r.id, r.run_id, r.type, r.data, r.groups, r.position) for r in rows]


def _pending_children(connection: Connection, step_id: str) -> list[Publish]:
    """Messages this step caused whose publication was never confirmed: send them now.

    That is the gap between a commit and its publish (the worker died in between); children
    already handed to the broker are not sent twice.
    """
    rows = connection.execute(
        select(outbox)
        .join(steps, steps.c.id == outbox.c.step_id)
        .join(events, events.c.id == steps.c.event_id)
        .where(events.c.cause_step_id == step_id)
    ).all()
    return [publish_from_outbox(r) for r in rows]


def publish_from_outbox(row: Any) -> Publish:
    return Publish(
        row.message_id, row.step_id, row.run_id, row.actor, row.queue, row.traceparent, row.delay_ms
    )
