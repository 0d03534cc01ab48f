"""What an operator does with dead letters: replay them or discard them, each recorded as an
operation (who, why, what came of it) the way `baton replay` and `baton cancel` record theirs.

A failed step is re-run in place with its run (`replay_failed_steps`). A dead-lettered
message is re-published when its bytes still point at a step that waits for a message;
undecodable bytes cannot be replayed. Each change is one transaction with its outbox rows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update

from store import _ids
from store._appending import add_to_outbox
from store._dead_letter_messages import decode_pointer
from store._dead_letters import KIND_MESSAGE, KIND_STEP, DeadLetterItem
from store._engine import Store
from store._errors import InvalidState, NotFound
from store._model import RUN_FAILED, STEP_FAILED, STEP_PENDING, Publish
from store._operations import (
    OPERATION_FAILED,
    OPERATION_INTERRUPTED,
    OPERATION_PARTIAL,
    OPERATION_SUCCEEDED,
    Operator,
    close_operation,
    open_operation,
    record_operation,
)
from store._runs import replay_failed_steps
from store._tables import dead_letters, runs, steps

# Kinds of operation.
DLQ_REPLAY = "dlq_replay"
DLQ_DISCARD = "dlq_discard"

_NOT_PENDING = {
    "succeeded": "its step already succeeded; nothing to replay (discard it)",
    "failed": "its step failed for good; replay the step itself (it is on the list too)",
    "running": "its step is running; if its worker died, the reconciler re-sends it",
    "waiting": "its step waits for a signal; `baton signal` resumes it",
    "collecting": "its step is a join still collecting its group",
    "canceled": "its run was canceled",
}


@dataclass
class ReplayOutcome:
    """Messages to publish after the commits, what runs again, and what could not and why."""

    operation_id: str
    publish: list[Publish] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.skipped:
            return OPERATION_SUCCEEDED
        return OPERATION_PARTIAL if self.replayed else OPERATION_FAILED


def plan_dead_letter_replay(
    store: Store, items: Sequence[DeadLetterItem]
) -> list[tuple[str, str | None]]:
    """For each item, None if a replay would run it again, else why it would not."""
    run_ids = sorted({item.run_id for item in items if item.kind == KIND_STEP and item.run_id})
    with store.read() as connection:
        statuses = {
            row.id: row.status
            for row in connection.execute(
                select(runs.c.id, runs.c.status).where(runs.c.id.in_(run_ids))
            )
        }
        plan: list[tuple[str, str | None]] = []
        for item in items:
            if item.kind == KIND_STEP:
                status = statuses.get(item.run_id or "")
                plan.append((item.id, None if status == RUN_FAILED else _run_not_failed(status)))
            else:
                pointed, why_not = _pointed_step(connection, _number(item))
                plan.append((item.id, None if pointed is not None else why_not))
    return plan


def replay_dead_letters(
    store: Store, items: Sequence[DeadLetterItem], *, reason: str, actor: str
) -> ReplayOutcome:
    """Re-run failed steps in place (per run) and re-publish dead-lettered step pointers,
    as one operation; the caller publishes ``outcome.publish`` (the commits are done)."""
    operator = open_operation(
        store,
        kind=DLQ_REPLAY,
        actor=actor,
        reason=reason,
        parameters={"items": [item.id for item in items]},
    )
    outcome = ReplayOutcome(operator.operation_id)
    status = OPERATION_INTERRUPTED
    try:
        _replay_steps(store, items, reason, operator, outcome)
        for item in items:
            if item.kind != KIND_MESSAGE:
                continue
            publish, why_not = requeue_dead_letter(store, _number(item))
            if publish is None:
                outcome.skipped.append((item.id, why_not))
            else:
                outcome.publish.append(publish)
                outcome.replayed.append(item.id)
        status = outcome.status
    finally:
        close_operation(
            store,
            operator.operation_id,
            status=status,
            outcome={"replayed": outcome.replayed, "skipped": dict(outcome.skipped)},
        )
    return outcome


def _replay_steps(
    store: Store,
    items: Sequence[DeadLetterItem],
    reason: str,
    operator: Operator,
    outcome: ReplayOutcome,
) -> None:
    by_run: dict[str, list[DeadLetterItem]] = defaultdict(list)
    for item in items:
        if item.kind == KIND_STEP and item.run_id:
            by_run[item.run_id].append(item)
    for run_id, run_items in by_run.items():
        try:
            outcome.publish += replay_failed_steps(store, run_id, reason=reason, operator=operator)
        except (InvalidState, NotFound) as error:
            outcome.skipped += [(item.id, str(error)) for item in run_items]
        else:
            outcome.replayed += [item.id for item in run_items]


def requeue_dead_letter(
    store: Store, number: int, now: float | None = None
) -> tuple[Publish | None, str]:
    """Re-publish the step a dead-lettered message points at, if it still waits for one.

    One transaction: the step's new message id, its outbox row, the dead letter taken off
    the list. The caller publishes after the commit.
    """
    now = time.time() if now is None else now
    with store.transaction() as connection:
        step, why_not = _pointed_step(connection, number)
        if step is None:
            return None, why_not
        message_id = _ids.new_message_id()
        connection.execute(
            update(steps)
            .where(steps.c.id == step.id, steps.c.state == STEP_PENDING)
            .values(message_id=message_id, published_at=now)
        )
        publish = Publish(
            message_id, step.id, step.run_id, step.actor, step.queue, step.traceparent
        )
        add_to_outbox(connection, [publish], now)
        connection.execute(
            update(dead_letters).where(dead_letters.c.id == number).values(discarded_at=now)
        )
    return publish, ""


def discard_dead_letters(
    store: Store,
    items: Sequence[DeadLetterItem],
    *,
    reason: str,
    actor: str,
    now: float | None = None,
) -> int:
    """Take items off the dead-letter list (their rows stay); returns how many were on it.

    One transaction, with the operation's record."""
    now = time.time() if now is None else now
    step_ids = [item.id for item in items if item.kind == KIND_STEP]
    numbers = [_number(item) for item in items if item.kind == KIND_MESSAGE]
    changed = 0
    with store.transaction() as connection:
        if step_ids:
            changed += connection.execute(
                update(steps)
                .where(steps.c.id.in_(step_ids), steps.c.state == STEP_FAILED)
                .values(discarded_at=now)
            ).rowcount
        if numbers:
            changed += connection.execute(
                update(dead_letters)
                .where(dead_letters.c.id.in_(numbers), dead_letters.c.discarded_at.is_(None))
                .values(discarded_at=now)
            ).rowcount
        record_operation(
            connection,
            Operator(actor=actor),
            kind=DLQ_DISCARD,
            reason=reason,
            parameters={"items": [item.id for item in items]},
            outcome={"discarded": changed},
            now=now,
        )
    return changed


def _pointed_step(connection: Connection, number: int) -> tuple[Any, str]:
    """The pending step a dead letter points at, or None and why it cannot be re-published."""
    row = connection.execute(
        select(dead_letters.c.raw, dead_letters.c.discarded_at).where(dead_letters.c.id == number)
    ).first()
    if row is None:
        raise NotFound(f"no dead letter dl-{number}; see `baton dlq list`")
    if row.discarded_at is not None:
        return None, "it was already taken off the list"
    pointer, why_not = decode_pointer(row.raw)
    if pointer is None:
        return None, why_not
    step = connection.execute(
        select(
            steps.c.id,
            steps.c.run_id,
            steps.c.actor,
            steps.c.queue,
            steps.c.traceparent,
            steps.c.state,
        ).where(steps.c.id == pointer["step_id"])
    ).first()
    if step is None or step.run_id != pointer["run_id"]:
        return None, f"it points at step {pointer['step_id']!r}, which the store does not have"
    if step.state != STEP_PENDING:
        return None, _NOT_PENDING.get(step.state, f"its step is {step.state}")
    return step, ""


def _run_not_failed(status: str | None) -> str:
    if status is None:
        return "its run is not in the store"
    return f"its run is {status}; only a failed run's steps are re-run in place"


def _number(item: DeadLetterItem) -> int:
    return int(item.id.removeprefix("dl-"))
