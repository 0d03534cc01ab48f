"""Reads for operators: find runs, show one run whole. Never on a step's hot path."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from store import _ids
from store._engine import Store
from store._errors import NotFound
from store._tables import (
    actor_catalog,
    agent_loops,
    conversation,
    events,
    memory,
    model_calls,
    runs,
    step_attempts,
    steps,
    tool_calls,
    waits,
)


@dataclass(frozen=True)
class RunFilter:
    status: str | None = None
    agent: str | None = None
    event_type: str | None = None
    since: float | None = None
    before_id: str | None = None  # cursor: runs older than this id
    limit: int = 50


def list_runs(store: Store, where: RunFilter) -> list[dict[str, Any]]:
    """Newest first; pass the last id back as ``before_id`` for the next page."""
    query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(where.limit)
    if where.status:
        query = query.where(runs.c.status == where.status)
    if where.agent:
        query = query.where(runs.c.agent == where.agent)
    if where.event_type:
        query = query.where(runs.c.trigger_type == where.event_type)
    if where.since is not None:
        query = query.where(runs.c.created_at >= where.since)
    if where.before_id:
        query = query.where(runs.c.id < where.before_id)
    with store.read() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def resolve_run_id(store: Store, run_id_or_part: str) -> str:
    """A full run id from an id, or the unique one that begins or ends with ``run_id_or_part``
    (at least 6 characters; listings show the last 12)."""
    with store.read() as connection:
        if connection.execute(select(runs.c.id).where(runs.c.id == run_id_or_part)).first():
            return run_id_or_part
        if len(run_id_or_part) >= _ids.FEWEST:
            found = (
                connection.execute(
                    select(runs.c.id).where(_ids.matching(runs.c.id, run_id_or_part)).limit(2)
                )
                .scalars()
                .all()
            )
            if len(found) == 1:
                return str(found[0])
            if len(found) > 1:
                raise NotFound(f"{run_id_or_part!r} matches several runs; give more characters")
    raise NotFound(f"no run {run_id_or_part!r}; list runs with `baton runs list`")


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    """The run with its events, steps (and their attempts), open waits and current memory."""
    with store.read() as connection:
        run = connection.execute(select(runs).where(runs.c.id == run_id)).first()
        if run is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        event_rows = connection.execute(
            select(events)
            .where(events.c.run_id == run_id)
            .order_by(events.c.created_at, events.c.position)
        ).all()
        step_rows = connection.execute(
            select(steps).where(steps.c.run_id == run_id).order_by(steps.c.created_at)
        ).all()
        attempt_rows = connection.execute(
            select(step_attempts)
            .where(step_attempts.c.run_id == run_id)
            .order_by(step_attempts.c.started_at)
        ).all()
        wait_rows = connection.execute(select(waits).where(waits.c.run_id == run_id)).all()
        newest = (
            select(func.max(memory.c.id))
            .where(memory.c.run_id == run_id)
            .group_by(memory.c.key)
            .scalar_subquery()
        )
        memory_rows = connection.execute(
            select(memory.c.key, memory.c.value).where(memory.c.id.in_(newest))
        ).all()
        loop_rows = connection.execute(
            select(agent_loops)
            .where(agent_loops.c.run_id == run_id)
            .order_by(agent_loops.c.created_at)
        ).all()
        call_rows = connection.execute(
            select(
                model_calls.c.step_id,
                model_calls.c.agent,
                model_calls.c.model,
                model_calls.c.input_tokens,
                model_calls.c.output_tokens,
                model_calls.c.cached_tokens,
                model_calls.c.reasoning_tokens,
                model_calls.c.cost_usd,
                model_calls.c.latency_ms,
            )
            .where(model_calls.c.run_id == run_id)
            .order_by(model_calls.c.created_at)
        ).all()
    attempts: dict[str, list[dict[str, Any]]] = {}
    for row in attempt_rows:
        attempts.setdefault(row.step_id, []).append(
            {k: v for k, v in row._mapping.items() if k not in ("step_id", "run_id")}
        )
    return {
        "run": dict(run._mapping),
        "events": [dict(row._mapping) for row in event_rows],
        "steps": [
            {**dict(row._mapping), "attempt_history": attempts.get(row.id, [])} for row in step_rows
        ],
        "waits": [dict(row._mapping) for row in wait_rows],
        "memory": {row.key: row.value for row in memory_rows},
        "agents": [dict(row._mapping) for row in loop_rows],
        "model_calls": [dict(row._mapping) for row in call_rows],
    }


def conversation_of(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every message of every agent loop in a run, in order (for people, not for steps)."""
    with store.read() as connection:
        rows = connection.execute(
            select(conversation)
            .where(conversation.c.run_id == run_id)
            .order_by(conversation.c.loop_id, conversation.c.seq)
        ).all()
    return [dict(row._mapping) for row in rows]


def tool_calls_of(store: Store, run_id: str) -> list[dict[str, Any]]:
    with store.read() as connection:
        rows = connection.execute(
            select(tool_calls)
            .where(tool_calls.c.run_id == run_id)
            .order_by(tool_calls.c.created_at)
        ).all()
    return [dict(row._mapping) for row in rows]


def run_status(store: Store, run_id: str) -> str | None:
    with store.read() as connection:
        status = connection.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
    return None if status is None else str(status)


def record_actors(store: Store, records: list[dict[str, Any]]) -> None:
    """Replace the catalog entries of these actors with what this worker declares."""
    if not records:
        return
    now = time.time()
    with store.transaction() as connection:
        connection.execute(
            delete(actor_catalog).where(actor_catalog.c.name.in_([r["name"] for r in records]))
        )
        connection.execute(insert(actor_catalog), [{**r, "updated_at": now} for r in records])


def modules_for_event_type(store: Store, event_type: str) -> list[str]:
    """The modules whose actors subscribe to ``event_type``, as workers last declared."""
    with store.read() as connection:
        rows = connection.execute(select(actor_catalog.c.module, actor_catalog.c.event_types))
        return sorted({row.module for row in rows if event_type in row.event_types})


def known_modules(store: Store) -> list[str]:
    with store.read() as connection:
        return sorted(set(connection.execute(select(actor_catalog.c.module)).scalars()))
