"""Creating runs: each run, its trigger event, the trigger's steps and their outbox rows are
committed together. Runs requested together (the gateway's group commit) share one
transaction and one dedupe query; ``create_run`` is the same for one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select

from store import _ids
from store._appending import append_events, settle_run
from store._engine import Store
from store._model import RUN_RUNNING, CreatedRun, NewEvent, Publish, Router
from store._tables import outbox, runs


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
            connection.execute(delete(outbox).where(outbox.c.message_id.in_(published)))
        known: dict[str, str] = {}
        if keys:
            known = {
                str(key): str(run_id)
                for key, run_id in connection.execute(
                    select(runs.c.dedupe_key, runs.c.id).where(runs.c.dedupe_key.in_(keys))
                )
            }
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
            connection.execute(
                insert(runs),
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
                    }
                    for request, run_id, trace_id in fresh
                ],
            )
        messages: dict[str, list[Publish]] = {}
        for request, run_id, trace_id in fresh:
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
            )
            if not messages[run_id]:
                # Nothing ready to run (no subscriber, or only a join): the store decides.
                settle_run(connection, run_id, RUN_RUNNING, now)
    return [
        CreatedRun(a.run_id, True, messages[a.run_id], a.subscribed) if a.created else a
        for a in answers
    ]


def _run_by_dedupe_key(store: Store, dedupe_key: str) -> str | None:
    with store.read() as connection:
        found = connection.execute(
            select(runs.c.id).where(runs.c.dedupe_key == dedupe_key)
        ).scalar()
    return None if found is None else str(found)
