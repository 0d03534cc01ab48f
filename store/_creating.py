"""Creating runs: each run, its trigger event, the trigger's steps and their outbox rows are
committed together. Runs requested together (the gateway's group commit) share one
transaction, one dedupe query and one multi-row statement per table; ``create_run`` is the
same for one."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from store import _hot as hot
from store import _ids
from store._appending import append_events, confirm_in, outbox_row, ready_step, settle_run
from store._engine import Store
from store._model import RUN_RUNNING, CreatedRun, NewEvent, Publish, Router
from store._tables import runs


class _MultiRowInsert:
    """``INSERT INTO table (columns) VALUES (...), (...), ...``: many rows in one statement.

    SQLite then takes one step for the whole batch, and the driver lets go of the GIL once
    instead of once per row.
    """

    # Bound parameters per statement: within SQLite's oldest limit (999) and PostgreSQL's.
    MAX_PARAMETERS = 999

    def __init__(self, table: str, columns: str, suffix: str = "") -> None:
        self.columns = tuple(column.strip() for column in columns.split(","))
        self.head = f"INSERT INTO {table} ({', '.join(self.columns)}) VALUES "
        self.suffix = f" {suffix}" if suffix else ""
        self.rows_per_statement = self.MAX_PARAMETERS // len(self.columns)
        self._statements: dict[int, hot.Values] = {}

    def run(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(rows), self.rows_per_statement):
            chunk = rows[start : start + self.rows_per_statement]
            values = [row[column] for row in chunk for column in self.columns]
            self._statement(len(chunk)).run(connection, values)

    def _statement(self, count: int) -> hot.Values:
        statement = self._statements.get(count)
        if statement is None:
            one = f"({', '.join(['?'] * len(self.columns))})"
            statement = hot.Values(self.head + ", ".join([one] * count) + self.suffix)
            self._statements[count] = statement
        return statement


_RUNS = _MultiRowInsert(
    "runs",
    "id, status, trigger_type, trigger_event_id, agent, parent_run_id, dedupe_key, trace_id, "
    "created_at, updated_at, recorded, model_calls, input_tokens, output_tokens, "
    "cached_tokens, reasoning_tokens, cost_usd",
)
# The same rows, and the same conflict handling, as the step protocol's own inserts.
_EVENTS = _MultiRowInsert(
    "events",
    "id, run_id, type, data, cause_step_id, position, groups, created_at",
    "ON CONFLICT DO NOTHING",
)
_STEPS = _MultiRowInsert(
    "steps",
    "id, run_id, event_id, actor, queue, state, attempts, attempt_base, max_retries, "
    "available_at, message_id, published_at, traceparent, join_expected, join_arrived, "
    "created_at, origin_step_id",
    "ON CONFLICT DO NOTHING",
)
_OUTBOX = _MultiRowInsert(
    "outbox", "message_id, step_id, run_id, actor, queue, traceparent, delay_ms, created_at"
)


@dataclass(frozen=True)
class RunRequest:
    """One run to create. ``root_span_id`` (with ``trace_id``) is the span that started it,
    e.g. the webhook request's: the trigger's steps are its children."""

    trigger: NewEvent
    dedupe_key: str | None = None
    trace_id: str | None = None
    root_span_id: str | None = None
    parent_run_id: str | None = None
    agent: str | None = None


def create_run(
    store: Store,
    trigger: NewEvent,
    router: Router,
    *,
    dedupe_key: str | None = None,
    parent_run_id: str | None = None,
    agent: str | None = None,
    trace_id: str | None = None,
    root_span_id: str | None = None,
    now: float | None = None,
) -> CreatedRun:
    """Create a run, its trigger event, the trigger's steps and their outbox rows: one commit.

    With ``dedupe_key``, a second call with the same key creates nothing and returns the
    first run (``created`` False).
    """
    if dedupe_key is not None:
        # A fast path outside the write lock; create_runs checks again under it.
        existing = _run_by_dedupe_key(store, dedupe_key)
        if existing is not None:
            return CreatedRun(existing, created=False, publish=[], subscribed=True)
    request = RunRequest(trigger, dedupe_key, trace_id, root_span_id, parent_run_id, agent)
    [created] = create_runs(store, [request], router, now=now)
    return created


def create_runs(
    store: Store,
    requests: Sequence[RunRequest],
    router: Router,
    *,
    published: Sequence[str] = (),
    now: float | None = None,
) -> list[CreatedRun]:
    """``create_run`` for each request, in one transaction; a key seen earlier (in the store or
    in the batch) gets the first run, ``created`` False. ``published`` are message ids the
    broker has taken since the last commit: their outbox rows are deleted in the same one."""
    now = time.time() if now is None else now
    keys = [r.dedupe_key for r in requests if r.dedupe_key is not None]
    answers: list[CreatedRun] = []
    with store.transaction() as connection:
        if published:
            confirm_in(connection, published)
        known: dict[str, str] = {}
        for start in range(0, len(keys), _MultiRowInsert.MAX_PARAMETERS):
            chunk = keys[start : start + _MultiRowInsert.MAX_PARAMETERS]
            known.update(_known_keys(len(chunk)).run(connection, chunk))
        fresh: list[tuple[RunRequest, str, str]] = []
        for request in requests:
            if request.dedupe_key is not None and request.dedupe_key in known:
                answers.append(CreatedRun(known[request.dedupe_key], False, [], True))
                continue
            run_id = _ids.new_run_id(now)
            if request.dedupe_key is not None:
                known[request.dedupe_key] = run_id
            fresh.append((request, run_id, request.trace_id or _ids.new_trace_id()))
            answers.append(CreatedRun(run_id, True, [], bool(router(request.trigger.type))))
        if fresh:
            _RUNS.run(
                connection,
                [
                    {
                        "id": run_id,
                        "status": RUN_RUNNING,
                        "trigger_type": request.trigger.type,
                        "trigger_event_id": _ids.trigger_event_id(run_id),
                        "agent": request.agent,
                        "parent_run_id": request.parent_run_id,
                        "dedupe_key": request.dedupe_key,
                        "trace_id": trace_id,
                        "created_at": now,
                        "updated_at": now,
                        "recorded": False,
                        "model_calls": 0,
                        "input_tokens": 0,
                        "output_tokens": 0,
                        "cached_tokens": 0,
                        "reasoning_tokens": 0,
                        "cost_usd": 0.0,
                    }
                    for request, run_id, trace_id in fresh
                ],
            )
        messages = _append_triggers(connection, fresh, router, now)
    return [
        CreatedRun(a.run_id, True, messages[a.run_id], a.subscribed) if a.created else a
        for a in answers
    ]


def _append_triggers(
    connection: Connection,
    fresh: Sequence[tuple[RunRequest, str, str]],
    router: Router,
    now: float,
) -> dict[str, list[Publish]]:
    """Each new run's trigger event, its steps and their outbox rows, one statement per table.

    The rows are the ones ``append_events`` makes for a trigger; a run whose trigger reaches
    a join, or no actor at all, goes through ``append_events`` itself (rare: a join or an
    ignored type is never the gateway's hot path).
    """
    messages: dict[str, list[Publish]] = {}
    event_rows: list[dict[str, Any]] = []
    step_rows: list[dict[str, Any]] = []
    plain: list[Publish] = []
    no_groups = hot.json_in(connection, [])
    for request, run_id, trace_id in fresh:
        routes = router(request.trigger.type)
        if not routes or any(route.join for route in routes):
            messages[run_id] = append_events(
                connection,
                run_id=run_id,
                trace_id=trace_id,
                cause_step_id=None,
                new_events=[request.trigger],
                groups=[],
                router=router,
                now=now,
                event_ids=[_ids.trigger_event_id(run_id)],
                cause_span_id=request.root_span_id,
            ).publish
            if not messages[run_id]:
                # Nothing ready to run (no subscriber, or only a join): the store decides.
                settle_run(connection, run_id, RUN_RUNNING, now)
            continue
        event_id = _ids.trigger_event_id(run_id)
        event_rows.append(
            {
                "id": event_id,
                "run_id": run_id,
                "type": request.trigger.type,
                "data": hot.json_in(connection, request.trigger.data),
                "cause_step_id": None,
                "position": 0,
                "groups": no_groups,
                "created_at": now,
            }
        )
        parent = _ids.traceparent(trace_id, request.root_span_id or trace_id[:16])
        ready = messages[run_id] = []
        for route in routes:
            row, message = ready_step(run_id, event_id, route, parent, now)
            step_rows.append(row)
            ready.append(message)
        plain += ready
    if event_rows:
        _EVENTS.run(connection, event_rows)
        _STEPS.run(connection, step_rows)
        _OUTBOX.run(connection, [outbox_row(p, now) for p in plain])
    return messages


_KNOWN_KEYS: dict[int, hot.Values] = {}


def _known_keys(count: int) -> hot.Values:
    """``SELECT dedupe_key, id FROM runs`` for ``count`` keys: a probe of the unique index each."""
    statement = _KNOWN_KEYS.get(count)
    if statement is None:
        marks = ", ".join(["?"] * count)
        statement = _KNOWN_KEYS[count] = hot.Values(
            f"SELECT dedupe_key, id FROM runs WHERE dedupe_key IN ({marks})"
        )
    return statement


def _run_by_dedupe_key(store: Store, dedupe_key: str) -> str | None:
    with store.read() as connection:
        found = connection.execute(
            select(runs.c.id).where(runs.c.dedupe_key == dedupe_key)
        ).scalar()
    return None if found is None else str(found)
