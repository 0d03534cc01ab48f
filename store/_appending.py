"""Appending events and the steps they cause, inside a caller's transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from store import _hot as hot
from store import _ids
from store._model import (
    RUN_CANCELED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RUN_WAITING,
    STEP_COLLECTING,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RUNNING,
    STEP_WAITING,
    ClaimedStep,
    Committed,
    Eager,
    NewEvent,
    Publish,
    Route,
    Router,
    StoredEvent,
)
from store._tables import events, join_arrivals, runs, steps


def insert_on_conflict_ignore(connection: Connection, table: Any) -> Any:
    """INSERT that ignores duplicate keys: duplicates collapse instead of racing.

    Its rowcount says how many rows were new (callers count join arrivals and applied effects
    with it); SQLAlchemy drops an INSERT's rowcount on psycopg unless asked to keep it.
    """
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)


# Key of ``connection.info`` where an observer (workers' metrics) that opened a list at BEGIN
# collects the statuses of the runs this transaction finishes; it reads them at COMMIT.
FINISHED_RUNS = "baton.finished_runs"


def note_run_finished(connection: Connection, status: str) -> None:
    """Tell an after-commit observer, if one watches this engine, that a run finished."""
    finished = connection.info.get(FINISHED_RUNS)
    if finished is not None:
        finished.append(status)


def lock_run(connection: Connection, run_id: str) -> Any:
    """Read the run row, locking it on PostgreSQL so commits within one run serialise.

    Without the lock two concurrent last steps could each see the other still open and
    neither would finish the run. SQLite's BEGIN IMMEDIATE already serialises writers.
    """
    statement = hot.RUN_LOCK if connection.dialect.name == "postgresql" else hot.RUN_READ
    return statement.run(connection, {"id": run_id}).first()


def append_events(
    connection: Connection,
    *,
    run_id: str,
    trace_id: str,
    cause_step_id: str | None,
    new_events: Sequence[NewEvent],
    groups: list[list[Any]],
    router: Router,
    now: float,
    event_ids: Sequence[str] | None = None,
    cause_span_id: str | None = None,
    cause_origin_step_id: str | None = None,
    eager: Eager | None = None,
    recorded: bool = False,
) -> Committed:
    """Insert events and a step per subscribed actor, with outbox rows for the ready steps.

    The new steps' trace parent is ``cause_span_id`` (the committing attempt's span, or the
    request span that started the run), else the cause step's first span. In a fork,
    ``cause_origin_step_id`` is the parent run's counterpart of the cause step: each new step
    gets its own counterpart, derived the way the parent derived its ids. A ready step that
    ``eager`` takes is written claimed, without a message (``recorded``: the run's flag).
    """
    parent_span = cause_span_id or (_ids.span_id(cause_step_id) if cause_step_id else trace_id[:16])
    plain: list[Publish] = []
    ready_joins: list[Publish] = []
    claimed: list[ClaimedStep] = []
    event_rows = []
    step_rows = []
    for position, new_event in enumerate(new_events):
        if event_ids is not None:
            event_id = event_ids[position]
        else:
            assert cause_step_id is not None
            event_id = _ids.event_id(cause_step_id, position)
        origin_event_id = (
            _counterpart(
                connection,
                events.c.id,
                _ids.event_id(cause_origin_step_id, position),
                _ids.legacy_event_id(cause_origin_step_id, position),
            )
            if cause_origin_step_id
            else None
        )
        event_rows.append(
            {
                "id": event_id,
                "run_id": run_id,
                "type": new_event.type,
                "data": new_event.data,
                "cause_step_id": cause_step_id,
                "position": position,
                "groups": groups,
                "created_at": now,
            }
        )
        for route in router(new_event.type):
            if route.join:
                ready = _arrive_at_join(
                    connection,
                    run_id,
                    trace_id,
                    parent_span,
                    event_id,
                    groups,
                    route,
                    now,
                    origin_event_id=origin_event_id,
                )
                if ready is not None:
                    ready_joins.append(ready)
                continue
            origin_step_id = (
                _counterpart(
                    connection,
                    steps.c.id,
                    _ids.step_id(origin_event_id, route.actor),
                    _ids.legacy_step_id(origin_event_id, route.actor),
                )
                if origin_event_id
                else None
            )
            if eager is not None and eager.takes(route.actor):
                row, step = _taken_step(
                    eager,
                    StoredEvent(event_id, run_id, new_event.type, new_event.data, groups, position),
                    route,
                    trace_id,
                    parent_span,
                    now,
                    origin_step_id=origin_step_id,
                    recorded=recorded,
                )
                step_rows.append(row)
                claimed.append(step)
                continue
            row, ready = ready_step(
                run_id,
                event_id,
                route,
                _ids.traceparent(trace_id, parent_span),
                now,
                origin_step_id=origin_step_id,
            )
            step_rows.append(row)
            plain.append(ready)
    if event_rows:
        hot.EVENTS_INSERT.run(
            connection,
            [
                {
                    **row,
                    "data": hot.json_in(connection, row["data"]),
                    "groups": hot.json_in(connection, row["groups"]),
                }
                for row in event_rows
            ],
        )
    if step_rows:
        hot.STEPS_INSERT.run(connection, step_rows)
    if claimed:
        hot.ATTEMPT_START.run(
            connection,
            [
                {
                    "step_id": step.id,
                    "attempt": 1,
                    "run_id": run_id,
                    "worker": eager.owner if eager else "",
                    "started_at": now,
                }
                for step in claimed
            ],
        )
    # A join that became ready wrote its own outbox row in _arrive_at_join.
    add_to_outbox(connection, plain, now)
    return Committed([*plain, *ready_joins], claimed)


def _counterpart(connection: Connection, column: Any, derived: str, legacy: str) -> str:
    """The parent run's row that a fork's new row stands for: ``derived`` the way ids are
    derived now, or ``legacy``, the way they were before ids began with their run's time,
    if that is the one the parent has (a run from before then)."""
    found = connection.execute(select(column).where(column.in_((derived, legacy)))).scalars()
    return legacy if set(found) == {legacy} else derived


def ready_step(
    run_id: str,
    event_id: str,
    route: Route,
    parent: str,
    now: float,
    *,
    origin_step_id: str | None = None,
) -> tuple[dict[str, Any], Publish]:
    """The row of a step ready to run at once, and the message that hands it to its actor."""
    step_id = _ids.step_id(event_id, route.actor)
    message_id = _ids.new_message_id()
    row = _step_row(
        step_id,
        run_id,
        event_id,
        route.actor,
        route.queue,
        route.max_retries,
        parent,
        message_id,
        now,
        origin_step_id=origin_step_id,
    )
    return row, Publish(message_id, step_id, run_id, route.actor, route.queue, parent)


def _taken_step(
    eager: Eager,
    event: StoredEvent,
    route: Route,
    trace_id: str,
    parent_span: str,
    now: float,
    *,
    origin_step_id: str | None,
    recorded: bool,
) -> tuple[dict[str, Any], ClaimedStep]:
    """The row of a step its committing worker takes at once, and the step as it runs it."""
    step_id = _ids.step_id(event.id, route.actor)
    parent = _ids.traceparent(trace_id, parent_span)
    row = _step_row(
        step_id,
        event.run_id,
        event.id,
        route.actor,
        route.queue,
        route.max_retries,
        parent,
        None,
        now,
        state=STEP_RUNNING,
        origin_step_id=origin_step_id,
    )
    row.update(
        attempts=1,
        lease_owner=eager.owner,
        # From now, not from the commit's ``now``, which was read before the transaction
        # waited for the write lock (perhaps longer than a lease), as a claim's is.
        lease_expires_at=max(now, time.time()) + eager.lease_seconds,
        started_at=now,
    )
    step = ClaimedStep(
        id=step_id,
        run_id=event.run_id,
        actor=route.actor,
        attempt=1,
        attempts_left=route.max_retries,
        attempt_base=0,
        traceparent=parent,
        trace_id=trace_id,
        event=event,
        events=[event],
        origin_step_id=origin_step_id,
        recorded=recorded,
        available_at=now,
    )
    return row, step


def _step_row(
    step_id: str,
    run_id: str,
    event_id: str,
    actor: str,
    queue: str,
    max_retries: int,
    parent: str,
    message_id: str | None,
    now: float,
    *,
    state: str = STEP_PENDING,
    join_expected: int | None = None,
    origin_step_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": step_id,
        "run_id": run_id,
        "event_id": event_id,
        "actor": actor,
        "queue": queue,
        "state": state,
        "attempts": 0,
        "attempt_base": 0,
        "max_retries": max_retries,
        "available_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "message_id": message_id,
        "published_at": now if message_id else None,
        "traceparent": parent,
        "join_expected": join_expected,
        "join_arrived": 0,
        "created_at": now,
        "started_at": None,
        "origin_step_id": origin_step_id,
    }


def _arrive_at_join(
    connection: Connection,
    run_id: str,
    trace_id: str,
    parent_span: str,
    event_id: str,
    groups: list[list[Any]],
    route: Any,
    now: float,
    *,
    origin_event_id: str | None = None,
) -> Publish | None:
    """Count one arrival at a join step; the arrival that completes the group makes it ready.

    An event outside any fan-out group is a group of one. Arrivals are unique per event, so a
    re-appended event cannot be counted twice, and the counter update is serialised by the run
    lock: exactly one arrival sees the count reach the group size.
    """
    group_id, size = (groups[-1][0], int(groups[-1][1])) if groups else (event_id, 1)
    position = len(groups)
    join_id = _ids.join_step_id(group_id, route.actor)
    origin_join_id = None
    if origin_event_id is not None:
        # In a fork: the parent's join collected the parent's counterpart of this group.
        origin_group_id = (
            connection.execute(
                select(steps.c.origin_step_id).where(steps.c.id == group_id)
            ).scalar()
            if groups
            else origin_event_id
        )
        if origin_group_id is not None:
            origin_join_id = _ids.join_step_id(origin_group_id, route.actor)
    parent = _ids.traceparent(trace_id, parent_span)
    connection.execute(
        insert_on_conflict_ignore(connection, steps),
        [
            _step_row(
                join_id,
                run_id,
                event_id,
                route.actor,
                route.queue,
                route.max_retries,
                parent,
                None,
                now,
                state=STEP_COLLECTING,
                join_expected=size,
                origin_step_id=origin_join_id,
            )
        ],
    )
    arrived = connection.execute(
        insert_on_conflict_ignore(connection, join_arrivals),
        [{"step_id": join_id, "event_id": event_id, "position": position}],
    )
    if arrived.rowcount != 1:
        return None
    connection.execute(
        update(steps).where(steps.c.id == join_id).values(join_arrived=steps.c.join_arrived + 1)
    )
    count = connection.execute(
        select(steps.c.join_arrived, steps.c.join_expected).where(steps.c.id == join_id)
    ).one()
    if count.join_arrived < count.join_expected:
        return None
    message_id = _ids.new_message_id()
    connection.execute(
        update(steps)
        .where(steps.c.id == join_id)
        .values(
            state=STEP_PENDING,
            event_id=event_id,
            traceparent=parent,
            message_id=message_id,
            published_at=now,
            available_at=now,
        )
    )
    ready = Publish(message_id, join_id, run_id, route.actor, route.queue, parent)
    add_to_outbox(connection, [ready], now)
    return ready


def add_to_outbox(connection: Connection, publish: Sequence[Publish], now: float) -> None:
    if not publish:
        return
    hot.OUTBOX_INSERT.run(connection, [outbox_row(p, now) for p in publish])


def confirm_in(connection: Connection, message_ids: Sequence[str]) -> None:
    """Delete these outbox rows inside the caller's transaction."""
    # One prepared DELETE run per id: an IN list of hundreds of ids costs more to build as
    # an expression than the deletes cost SQLite.
    _OUTBOX_DELETE.run(connection, [{"message_id": m} for m in message_ids])


_OUTBOX_DELETE = hot.Statement("DELETE FROM outbox WHERE message_id = :message_id")


def outbox_row(p: Publish, now: float) -> dict[str, Any]:
    """The outbox row of a message a commit causes: sent after the commit, relayed if not."""
    return {
        "message_id": p.message_id,
        "step_id": p.step_id,
        "run_id": p.run_id,
        "actor": p.actor,
        "queue": p.queue,
        "traceparent": p.traceparent,
        "delay_ms": p.delay_ms,
        "created_at": now,
    }


def settle_run(connection: Connection, run_id: str, status: str, now: float) -> str:
    """Derive the run's status from its open steps; the caller holds the run lock.

    A run succeeds when nothing is pending, running or waiting. A join still collecting
    when everything else is done can never fire: the run fails and says which.
    """
    if status in RUN_FINISHED:
        return status
    counts: dict[str, int] = {
        row.state: row.n for row in hot.OPEN_STEPS.run(connection, {"run_id": run_id})
    }
    error = None
    if counts.get(STEP_PENDING) or counts.get(STEP_RUNNING):
        new_status = RUN_RUNNING
    elif counts.get(STEP_FAILED):
        # Replaying one failed step must not end the run as succeeded while another is
        # still failed (its branch never ran).
        new_status = RUN_FAILED
        error = f"{counts[STEP_FAILED]} step(s) still failed; replay them to continue"
    elif counts.get(STEP_WAITING):
        new_status = RUN_WAITING
    elif counts.get(STEP_COLLECTING):
        new_status = RUN_FAILED
        stuck = connection.execute(
            select(steps.c.actor, steps.c.join_arrived, steps.c.join_expected).where(
                steps.c.run_id == run_id, steps.c.state == STEP_COLLECTING
            )
        ).first()
        assert stuck is not None
        error = (
            f"join {stuck.actor!r} received {stuck.join_arrived} of {stuck.join_expected} "
            "events and nothing else can send more"
        )
    else:
        new_status = RUN_SUCCEEDED
    if new_status == status:
        return status
    values: dict[str, Any] = {"status": new_status, "updated_at": now}
    if new_status in RUN_FINISHED:
        values["finished_at"] = now
        note_run_finished(connection, new_status)
    if error:
        values["error"] = error
        connection.execute(update(runs).where(runs.c.id == run_id).values(**values))
    else:
        hot.RUN_STATUS.run(
            connection,
            {
                "id": run_id,
                "status": new_status,
                "now": now,
                "finished_at": values.get("finished_at"),
            },
        )
    if new_status == RUN_SUCCEEDED:
        append_lifecycle(connection, run_id, "baton.run.succeeded", {}, None, now)
    return new_status


def mark_run_failed(
    connection: Connection,
    run_id: str,
    failure: dict[str, Any],
    step_id: str,
    attempt: int,
    now: float,
) -> None:
    error = f"step {failure['actor']} failed: {failure['error_type']}: {failure['message']}"
    if FINISHED_RUNS in connection.info:
        previous = connection.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
        if previous not in RUN_FINISHED:
            note_run_finished(connection, RUN_FAILED)
    connection.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status.not_in([RUN_CANCELED]))
        .values(status=RUN_FAILED, error=error, updated_at=now, finished_at=now)
    )
    append_lifecycle(
        connection, run_id, "baton.run.failed", failure, step_id, now, key=f"{step_id}/{attempt}"
    )


def append_lifecycle(
    connection: Connection,
    run_id: str,
    type: str,
    data: dict[str, Any],
    cause_step_id: str | None,
    now: float,
    *,
    key: str = "",
) -> None:
    """Record a run's lifecycle in its own log; no actor is dispatched for these events."""
    hot.EVENTS_INSERT.run(
        connection,
        {
            "id": _ids.derive_id(type, run_id, key),
            "run_id": run_id,
            "type": type,
            "data": hot.json_in(connection, data),
            "cause_step_id": cause_step_id,
            "position": -1,
            "groups": hot.json_in(connection, []),
            "created_at": now,
        },
    )
