"""Run-level state changes: signal, cancel, replay. Each is one transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from store import _ids
from store._appending import (
    add_to_outbox,
    append_lifecycle,
    lock_run,
    note_run_finished,
    settle_run,
)
from store._engine import Store
from store._errors import InvalidState, NotFound, SignalAmbiguous
from store._model import (
    RUN_CANCELED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RUNNING,
    RUN_WAITING,
    STEP_CANCELED,
    STEP_COLLECTING,
    STEP_FAILED,
    STEP_PENDING,
    STEP_WAITING,
    Publish,
)
from store._operations import CANCEL, REPLAY, Operator, record_operation
from store._tables import events, runs, steps, waits


def send_signal(
    store: Store,
    run_id: str,
    name: str,
    data: dict[str, Any],
    now: float | None = None,
    *,
    step: str | None = None,
    every: bool = False,
) -> list[Publish]:
    """Deliver a named signal to the step waiting for it, and it resumes.

    When several steps of the run wait for that name (two tool calls that need approval),
    the caller names one with ``step`` (its id, or the id's unique start or end) or sends
    it to them all with ``every``; otherwise InvalidState lists them and nothing changes:
    one "approve" must not approve calls its sender did not look at.
    """
    if step is not None and every:
        raise ValueError("name one waiting step or send to every one, not both")
    if step is not None and not step.strip():
        raise NotFound("an empty step names no step; give its id, or the id's start or end")
    now = time.time() if now is None else now
    with store.transaction() as connection:
        run = lock_run(connection, run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        if run.status in RUN_FINISHED:
            raise InvalidState(f"run {run_id} is {run.status}; a signal can only reach a live run")
        open_waits = connection.execute(
            select(waits.c.id, waits.c.name, waits.c.step_id).where(
                waits.c.run_id == run_id, waits.c.state == "open"
            )
        ).all()
        matching = [w for w in open_waits if w.name == name]
        if not matching:
            names = sorted({w.name for w in open_waits}) or ["none"]
            raise NotFound(
                f"run {run_id} has no open wait named {name!r}; open waits: {', '.join(names)}"
            )
        waiting = sorted({w.step_id for w in matching})
        if step is not None:
            named = [s for s in waiting if s == step or s.startswith(step) or s.endswith(step)]
            if len(named) != 1:
                raise NotFound(
                    f"step {step!r} {'is ambiguous among' if named else 'is not one of'} the "
                    f"steps of run {run_id} waiting for {name!r}: {', '.join(waiting)}"
                )
            matching = [w for w in matching if w.step_id == named[0]]
        elif len(waiting) > 1 and not every:
            actors: dict[str, str] = dict(
                connection.execute(
                    select(steps.c.id, steps.c.actor).where(steps.c.id.in_(waiting))
                ).all()
            )
            listed = "; ".join(f"{s} ({actors.get(s, '?')})" for s in waiting)
            raise SignalAmbiguous(
                f"{len(waiting)} steps of run {run_id} wait for {name!r}: {listed}. Name one "
                "(`--step STEP`, over HTTP `?step=STEP`: its id, or the id's unique start or "
                "end) or send it to all of them (`--all`, `?all=true`)"
            )
        return _resolve_waits(connection, run_id, matching, "satisfied", data, now, run.status)


def fire_due_timers(store: Store, now: float | None = None, limit: int = 200) -> list[Publish]:
    """Time out every open wait whose deadline has passed; their steps run again."""
    now = time.time() if now is None else now
    with store.read() as connection:
        due = (
            connection.execute(
                select(waits.c.run_id)
                .where(waits.c.state == "open", waits.c.deadline < now)
                .distinct()
                .limit(limit)
            )
            .scalars()
            .all()
        )
    publish: list[Publish] = []
    for run_id in due:
        with store.transaction() as connection:
            run = lock_run(connection, run_id)
            expired = connection.execute(
                select(waits.c.id, waits.c.name, waits.c.step_id).where(
                    waits.c.run_id == run_id, waits.c.state == "open", waits.c.deadline < now
                )
            ).all()
            if expired:
                publish += _resolve_waits(
                    connection, run_id, expired, "timed_out", {}, now, run.status
                )
    return publish


def _resolve_waits(
    connection: Connection,
    run_id: str,
    resolved: Sequence[Any],
    state: str,
    data: dict[str, Any],
    now: float,
    run_status: str,
) -> list[Publish]:
    publish = []
    for wait in resolved:
        connection.execute(
            update(waits)
            .where(waits.c.id == wait.id)
            .values(state=state, data=data, resolved_at=now)
        )
        # A step waiting for any of several signals (approve or reject) takes the first.
        connection.execute(
            update(waits)
            .where(waits.c.step_id == wait.step_id, waits.c.state == "open")
            .values(state="superseded", resolved_at=now)
        )
        step = connection.execute(
            select(steps.c.actor, steps.c.queue, steps.c.traceparent).where(
                steps.c.id == wait.step_id
            )
        ).one()
        # The signal joins the run's log as a fact, caused by the step that waited for it.
        connection.execute(
            insert(events).values(
                id=_ids.derive_id("signal", wait.id),
                run_id=run_id,
                type="baton.signal",
                data={"name": wait.name, "data": data, "timed_out": state == "timed_out"},
                cause_step_id=wait.step_id,
                position=-1,
                groups=[],
                created_at=now,
            )
        )
        message_id = _ids.new_message_id()
        resumed = connection.execute(
            update(steps)
            .where(steps.c.id == wait.step_id, steps.c.state == STEP_WAITING)
            .values(state=STEP_PENDING, available_at=now, message_id=message_id, published_at=now)
        )
        if resumed.rowcount != 1:
            # The step already moved on (a sibling wait of it was signalled first).
            continue
        publish.append(
            Publish(message_id, wait.step_id, run_id, step.actor, step.queue, step.traceparent)
        )
    add_to_outbox(connection, publish, now)
    settle_run(connection, run_id, run_status, now)
    return publish


def cancel_run(
    store: Store,
    run_id: str,
    reason: str,
    now: float | None = None,
    *,
    operator: Operator | None = None,
) -> str:
    """Cancel a live run: nothing pending runs, nothing in flight is committed after this.

    With ``operator``, the cancel is recorded as an operation in the same transaction.
    """
    now = time.time() if now is None else now
    with store.transaction() as connection:
        run = lock_run(connection, run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        if run.status in RUN_FINISHED:
            raise InvalidState(f"run {run_id} is already {run.status}; nothing to cancel")
        canceled = connection.execute(
            update(steps)
            .where(
                steps.c.run_id == run_id,
                steps.c.state.in_([STEP_PENDING, STEP_WAITING, STEP_COLLECTING]),
            )
            .values(state=STEP_CANCELED, finished_at=now)
        )
        connection.execute(
            update(waits)
            .where(waits.c.run_id == run_id, waits.c.state == "open")
            .values(state="canceled", resolved_at=now)
        )
        connection.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                status=RUN_CANCELED, error=f"canceled: {reason}", updated_at=now, finished_at=now
            )
        )
        logged = {"reason": reason, **(operator.log_fields() if operator else {})}
        append_lifecycle(connection, run_id, "baton.run.canceled", logged, None, now)
        note_run_finished(connection, RUN_CANCELED)
        if operator is not None:
            record_operation(
                connection,
                operator,
                kind=CANCEL,
                reason=reason,
                parameters={"run_id": run_id},
                outcome={
                    "run_id": run_id,
                    "was": run.status,
                    "status": RUN_CANCELED,
                    "steps_canceled": canceled.rowcount,
                },
                now=now,
            )
    return RUN_CANCELED


def replay_failed_steps(
    store: Store,
    run_id: str,
    *,
    reason: str,
    step_id: str | None = None,
    now: float | None = None,
    operator: Operator | None = None,
) -> list[Publish]:
    """Re-run a failed run's failed steps in place; succeeded steps are never re-run.

    Each replayed step gets a fresh retry budget; its id, and so its idempotency key, stays.
    A step parked as OutcomeUnknown (a non-idempotent tool call that may have happened) is
    a failed step: replaying it is the operator's word that the call may be made again.
    Steps the failure held back (pending, e.g. between retries) are sent again as they were:
    the retries and the backoff they had left, and no such word. With ``operator``, the replay is
    recorded as an operation in the same transaction.
    """
    now = time.time() if now is None else now
    with store.transaction() as connection:
        run = lock_run(connection, run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        if run.status != RUN_FAILED:
            # A waiting step is parked for a signal, not failed: a signal or its timer resumes
            # it. (A step parked as OutcomeUnknown is a failed step, and is replayed here.)
            hint = (
                f"; it resumes with `baton signal {run_id} NAME`"
                if run.status == RUN_WAITING
                else ""
            )
            raise InvalidState(
                f"run {run_id} is {run.status}; in-place replay re-runs the failed steps of a "
                f"failed run{hint}"
            )
        query = select(steps.c.id, steps.c.actor, steps.c.queue, steps.c.traceparent).where(
            steps.c.run_id == run_id, steps.c.state == STEP_FAILED
        )
        if step_id is not None:
            query = query.where(steps.c.id == step_id)
        failed = connection.execute(query).all()
        if not failed:
            which = f"step {step_id!r} is not a failed step of" if step_id else "no failed step in"
            raise InvalidState(f"{which} run {run_id}; see `baton runs show {run_id}`")
        # Steps that became ready while the run was failed were held back: send them too.
        halted = connection.execute(
            select(steps.c.id, steps.c.actor, steps.c.queue, steps.c.traceparent).where(
                steps.c.run_id == run_id, steps.c.state == STEP_PENDING
            )
        ).all()
        publish = []
        replayed = {step.id for step in failed}
        for step in [*failed, *halted]:
            message_id = _ids.new_message_id()
            values: dict[str, Any] = {
                "state": STEP_PENDING,
                "message_id": message_id,
                "published_at": now,
                "finished_at": None,
            }
            if step.id in replayed:
                # The replayed step runs now, with a fresh retry budget and the operator's word
                # that what an earlier attempt may have done outside (a non-idempotent tool)
                # may be done again. A held-back step goes on as it was: its own retries, its
                # backoff (a provider's Retry-After), and no such word.
                values["available_at"] = now
                values["attempt_base"] = steps.c.attempts
            connection.execute(update(steps).where(steps.c.id == step.id).values(**values))
            publish.append(
                Publish(message_id, step.id, run_id, step.actor, step.queue, step.traceparent)
            )
        add_to_outbox(connection, publish, now)
        connection.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status=RUN_RUNNING, error=None, updated_at=now, finished_at=None)
        )
        append_lifecycle(
            connection,
            run_id,
            "baton.run.replayed",
            {
                "reason": reason,
                "steps": [step.id for step in failed],
                **(operator.log_fields() if operator else {}),
            },
            None,
            now,
            key=_ids.new_message_id(),
        )
        if operator is not None:
            record_operation(
                connection,
                operator,
                kind=REPLAY,
                reason=reason,
                parameters={"run_id": run_id, "step_id": step_id, "mode": "in_place"},
                outcome={
                    "run_id": run_id,
                    "replayed_steps": [step.id for step in failed],
                    "resumed_steps": [step.id for step in halted],
                },
                now=now,
            )
    return publish
