"""Operations: what an operator did to runs (replay, fork, cancel): who, when, why, how it went.

A single-run operation is written in the transaction of the change it makes, so the record
and the change commit together or not at all; a refused one (a replay of a run that has not
failed) changes nothing and records nothing. A bulk operation is opened first, each run is
then changed in its own transaction that names the operation in the run's log, and the
operation is closed with every run's outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, exists, func, insert, select, update

from store import _ids
from store._engine import Store
from store._errors import NotFound
from store._model import RUN_FAILED, STEP_FAILED
from store._tables import operations, runs, steps

# Kinds of operation.
REPLAY = "replay"
FORK = "fork"
CANCEL = "cancel"
BULK_REPLAY = "bulk_replay"
BULK_CANCEL = "bulk_cancel"

# An operation's status: open while a bulk operation works through its runs, then how it went.
OPERATION_RUNNING = "running"
OPERATION_SUCCEEDED = "succeeded"
OPERATION_PARTIAL = "partial"  # some runs were changed, some could not be
OPERATION_FAILED = "failed"  # no run could be changed
OPERATION_INTERRUPTED = "interrupted"  # the operator stopped it part-way


def new_operation_id(now: float | None = None) -> str:
    """Time-sortable, as run ids are."""
    return _ids.new_run_id(now)


@dataclass(frozen=True)
class Operator:
    """Who changes a run, and under which operation.

    A single-run change records its operation row itself, in its own transaction. Inside a
    bulk operation (``bulk``) the row is the bulk operation's: the change only names it in
    the run's log.
    """

    actor: str
    operation_id: str = field(default_factory=new_operation_id)
    bulk: bool = False

    def log_fields(self) -> dict[str, Any]:
        """What a run's lifecycle event says about the operation that changed it."""
        return {"operation": self.operation_id, "by": self.actor}


def record_operation(
    connection: Connection,
    operator: Operator,
    *,
    kind: str,
    reason: str,
    parameters: dict[str, Any],
    outcome: dict[str, Any],
    now: float,
) -> None:
    """Inside a single-run change's transaction: the row of its operation, done."""
    if operator.bulk:
        return
    connection.execute(
        insert(operations).values(
            id=operator.operation_id,
            kind=kind,
            actor=operator.actor,
            reason=reason,
            parameters=parameters,
            status=OPERATION_SUCCEEDED,
            outcome=outcome,
            created_at=now,
            finished_at=now,
        )
    )


def open_operation(
    store: Store,
    *,
    kind: str,
    actor: str,
    reason: str,
    parameters: dict[str, Any],
    now: float | None = None,
) -> Operator:
    """Open a bulk operation; pass the returned Operator to each run's change."""
    now = time.time() if now is None else now
    operator = Operator(actor=actor, operation_id=new_operation_id(now), bulk=True)
    with store.transaction() as connection:
        connection.execute(
            insert(operations).values(
                id=operator.operation_id,
                kind=kind,
                actor=actor,
                reason=reason,
                parameters=parameters,
                status=OPERATION_RUNNING,
                outcome=None,
                created_at=now,
            )
        )
    return operator


def close_operation(
    store: Store,
    operation_id: str,
    *,
    status: str,
    outcome: dict[str, Any],
    now: float | None = None,
) -> None:
    now = time.time() if now is None else now
    with store.transaction() as connection:
        connection.execute(
            update(operations)
            .where(operations.c.id == operation_id)
            .values(status=status, outcome=outcome, finished_at=now)
        )


def add_to_outcome(store: Store, operation_id: str, **fields: Any) -> None:
    """Add what was learnt after the operation (a fork's divergence) to its outcome."""
    with store.transaction() as connection:
        current = connection.execute(
            select(operations.c.outcome).where(operations.c.id == operation_id)
        ).first()
        if current is None:
            raise NotFound(f"no operation {operation_id!r}")
        connection.execute(
            update(operations)
            .where(operations.c.id == operation_id)
            .values(outcome={**(current.outcome or {}), **fields})
        )


def operation_detail(store: Store, operation_id: str) -> dict[str, Any]:
    with store.read() as connection:
        row = connection.execute(select(operations).where(operations.c.id == operation_id)).first()
    if row is None:
        raise NotFound(f"no operation {operation_id!r}; list them with `baton operations list`")
    return dict(row._mapping)


def list_operations(
    store: Store, *, kind: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Newest first."""
    query = (
        select(operations)
        .order_by(operations.c.created_at.desc(), operations.c.id.desc())
        .limit(limit)
    )
    if kind is not None:
        query = query.where(operations.c.kind == kind)
    with store.read() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


@dataclass(frozen=True)
class RunSelection:
    """Runs an operator acts on in bulk.

    ``actor`` and ``error_type`` select runs with a step of that actor / that last error: for
    failed runs, a failed step; for live runs, any step (one retrying with that error, say).
    """

    status: str
    agent: str | None = None
    actor: str | None = None
    error_type: str | None = None
    since: float | None = None
    limit: int | None = None

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def select_runs(store: Store, selection: RunSelection) -> list[str]:
    """The ids of the selected runs, oldest first (the order a bulk operation works in)."""
    query = _selection_query(select(runs.c.id), selection).order_by(runs.c.created_at, runs.c.id)
    if selection.limit is not None:
        query = query.limit(selection.limit)
    with store.read() as connection:
        return [str(run_id) for run_id in connection.execute(query).scalars()]


def count_runs(store: Store, selection: RunSelection) -> int:
    query = _selection_query(select(func.count()).select_from(runs), selection)
    with store.read() as connection:
        count = int(connection.execute(query).scalar_one())
    return count if selection.limit is None else min(count, selection.limit)


def describe_runs(store: Store, run_ids: list[str]) -> list[dict[str, Any]]:
    """A sample's rows: the run, and its failed (or else most recent) step's actor and error."""
    if not run_ids:
        return []
    with store.read() as connection:
        run_rows = {
            row.id: dict(row._mapping)
            for row in connection.execute(
                select(
                    runs.c.id,
                    runs.c.status,
                    runs.c.trigger_type,
                    runs.c.agent,
                    runs.c.created_at,
                    runs.c.error,
                ).where(runs.c.id.in_(run_ids))
            )
        }
        step_rows = connection.execute(
            select(
                steps.c.run_id,
                steps.c.actor,
                steps.c.state,
                steps.c.error_type,
                steps.c.created_at,
            )
            .where(steps.c.run_id.in_(run_ids))
            .order_by(steps.c.created_at)
        ).all()
    described: dict[str, Any] = {}
    for step in step_rows:
        current = described.get(step.run_id)
        if current is None or current.state != STEP_FAILED:
            described[step.run_id] = step
    rows = []
    for run_id in run_ids:
        run = run_rows.get(run_id)
        if run is None:
            continue
        failing = described.get(run_id)
        rows.append(
            {
                **run,
                "step_actor": failing.actor if failing is not None else None,
                "error_type": failing.error_type if failing is not None else None,
            }
        )
    return rows


def _selection_query(query: Any, selection: RunSelection) -> Any:
    query = query.where(runs.c.status == selection.status)
    if selection.agent is not None:
        query = query.where(runs.c.agent == selection.agent)
    if selection.since is not None:
        query = query.where(runs.c.created_at >= selection.since)
    if selection.actor is not None or selection.error_type is not None:
        condition = steps.c.run_id == runs.c.id
        if selection.status == RUN_FAILED:
            condition = condition & (steps.c.state == STEP_FAILED)
        if selection.actor is not None:
            condition = condition & (steps.c.actor == selection.actor)
        if selection.error_type is not None:
            condition = condition & (steps.c.error_type == selection.error_type)
        query = query.where(exists(select(steps.c.id).where(condition)))
    return query


def statuses_of(store: Store, run_ids: list[str]) -> dict[str, str]:
    """Each run's status, for waiting on many runs at once."""
    found: dict[str, str] = {}
    with store.read() as connection:
        for chunk in range(0, len(run_ids), 500):
            for row in connection.execute(
                select(runs.c.id, runs.c.status).where(runs.c.id.in_(run_ids[chunk : chunk + 500]))
            ):
                found[row.id] = row.status
    return found
