"""Runs as data: the outcome an operator recorded for a run, agent conversations and model
exchanges read back for training sets and cassettes, and per-agent figures.

Exports page through runs by (created_at, id) on ``ix_runs_created``; each page reads its
loops, conversations and model calls through their run and loop indexes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, or_, select

from store._engine import Store
from store._errors import InvalidState, NotFound
from store._model import RUN_CANCELED, RUN_FAILED, RUN_SUCCEEDED
from store._tables import agent_loops, conversation, model_calls, run_labels, runs

LABELS = ("good", "bad")


def label_run(
    store: Store, run_id: str, label: str, note: str | None = None, now: float | None = None
) -> None:
    """Record a run's outcome; labelling it again replaces the label and the note."""
    if label not in LABELS:
        raise InvalidState(f"label {label!r} is not an outcome; use one of {', '.join(LABELS)}")
    now = time.time() if now is None else now
    with store.transaction() as connection:
        if connection.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        connection.execute(delete(run_labels).where(run_labels.c.run_id == run_id))
        connection.execute(
            insert(run_labels).values(run_id=run_id, label=label, note=note, created_at=now)
        )


def label_of(store: Store, run_id: str) -> dict[str, Any] | None:
    with store.read() as connection:
        row = connection.execute(select(run_labels).where(run_labels.c.run_id == run_id)).first()
    return None if row is None else dict(row._mapping)


@dataclass(frozen=True)
class ExportFilter:
    run_id: str | None = None
    agent: str | None = None  # loops of this agent, in whichever run
    status: str | None = None
    label: str | None = None
    since: float | None = None
    page_size: int = 100


@dataclass(frozen=True)
class LoopRecord:
    """One agent loop: its conversation in order and the first request made for it."""

    run_id: str
    loop_id: str
    agent: str
    messages: list[dict[str, Any]]
    request: dict[str, Any] | None


def loops_for_export(store: Store, where: ExportFilter) -> Iterator[LoopRecord]:
    """Every agent loop of the runs the filter selects, oldest run first, a page at a time."""
    after: tuple[float, str] | None = None
    while True:
        page = _runs_page(store, where, after)
        if not page:
            return
        yield from _loops_of(store, [run_id for run_id, _ in page], where.agent)
        if where.run_id is not None or len(page) < where.page_size:
            return
        after = page[-1][1], page[-1][0]


def _runs_page(
    store: Store, where: ExportFilter, after: tuple[float, str] | None
) -> list[tuple[str, float]]:
    query = select(runs.c.id, runs.c.created_at)
    if where.run_id is not None:
        query = query.where(runs.c.id == where.run_id)
    if where.status:
        query = query.where(runs.c.status == where.status)
    if where.since is not None:
        query = query.where(runs.c.created_at >= where.since)
    if where.label:
        query = query.join(run_labels, run_labels.c.run_id == runs.c.id).where(
            run_labels.c.label == where.label
        )
    if where.agent:
        in_loop = (
            select(agent_loops.c.id)
            .where(agent_loops.c.run_id == runs.c.id, agent_loops.c.agent == where.agent)
            .exists()
        )
        query = query.where(or_(runs.c.agent == where.agent, in_loop))
    if after is not None:
        created, run_id = after
        query = query.where(
            or_(
                runs.c.created_at > created,
                and_(runs.c.created_at == created, runs.c.id > run_id),
            )
        )
    query = query.order_by(runs.c.created_at, runs.c.id).limit(where.page_size)
    with store.read() as connection:
        return [(row.id, row.created_at) for row in connection.execute(query)]


def _loops_of(store: Store, run_ids: list[str], agent: str | None) -> list[LoopRecord]:
    query = select(agent_loops.c.id, agent_loops.c.run_id, agent_loops.c.agent).where(
        agent_loops.c.run_id.in_(run_ids)
    )
    if agent:
        query = query.where(agent_loops.c.agent == agent)
    order = {run_id: index for index, run_id in enumerate(run_ids)}
    records = []
    with store.read() as connection:
        loops = sorted(
            connection.execute(query.order_by(agent_loops.c.created_at)).all(),
            key=lambda loop: order[loop.run_id],
        )
        for loop in loops:
            messages = connection.execute(
                select(
                    conversation.c.role,
                    conversation.c.content,
                    conversation.c.tool_calls,
                    conversation.c.tool_call_id,
                    conversation.c.name,
                )
                .where(conversation.c.loop_id == loop.id)
                .order_by(conversation.c.seq)
            ).all()
            request = connection.execute(
                select(model_calls.c.request)
                .where(model_calls.c.run_id == loop.run_id, model_calls.c.loop_id == loop.id)
                .order_by(model_calls.c.created_at)
                .limit(1)
            ).scalar()
            records.append(
                LoopRecord(
                    run_id=loop.run_id,
                    loop_id=loop.id,
                    agent=loop.agent,
                    messages=[dict(row._mapping) for row in messages],
                    request=request,
                )
            )
    return records


def model_exchanges(store: Store, run_id: str) -> list[dict[str, Any]]:
    """A run's model calls in the order they were made: each request and its response."""
    with store.read() as connection:
        if connection.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        rows = connection.execute(
            select(model_calls.c.request, model_calls.c.response)
            .where(model_calls.c.run_id == run_id)
            .order_by(model_calls.c.created_at, model_calls.c.step_id)
        ).all()
    return [{"request": row.request, "response": row.response} for row in rows]


def agent_stats(
    store: Store, *, agent: str | None = None, since: float | None = None
) -> list[dict[str, Any]]:
    """Per agent (the run's first agent): runs, outcomes, tokens, cost, and labels.

    ``success_rate`` is succeeded / finished runs (succeeded, failed or canceled);
    ``cost_per_good_usd`` is the cost of every run divided by the runs labelled good.
    """

    def count_of(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    query = (
        select(
            runs.c.agent,
            func.count().label("runs"),
            count_of(runs.c.status == RUN_SUCCEEDED).label("succeeded"),
            count_of(runs.c.status == RUN_FAILED).label("failed"),
            count_of(runs.c.status == RUN_CANCELED).label("canceled"),
            func.coalesce(func.sum(runs.c.model_calls), 0).label("model_calls"),
            func.coalesce(func.sum(runs.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(runs.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(runs.c.cost_usd), 0.0).label("cost_usd"),
            count_of(run_labels.c.label == "good").label("good"),
            count_of(run_labels.c.label == "bad").label("bad"),
        )
        .select_from(runs.outerjoin(run_labels, run_labels.c.run_id == runs.c.id))
        .group_by(runs.c.agent)
        .order_by(runs.c.agent)
    )
    if agent:
        query = query.where(runs.c.agent == agent)
    if since is not None:
        query = query.where(runs.c.created_at >= since)
    with store.read() as connection:
        rows = connection.execute(query).all()
    figures = []
    for row in rows:
        finished = row.succeeded + row.failed + row.canceled
        cost = float(row.cost_usd)
        figures.append(
            {
                **dict(row._mapping),
                "cost_usd": cost,
                "finished": finished,
                "success_rate": row.succeeded / finished if finished else None,
                "cost_per_good_usd": cost / row.good if row.good else None,
            }
        )
    return figures
