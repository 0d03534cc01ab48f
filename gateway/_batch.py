"""Group commit: the runs requested while one transaction commits are created by the next.

Every request still gets exactly what ``store.create_run`` gives it — its run, trigger event,
steps and outbox rows committed together, deduplicated on its key — but requests that arrive
together share one transaction and one dedupe query. When requests come one at a time,
batches are of one and nothing waits for company.

``create_runs`` is the store's ``create_run`` for many: it belongs in ``store`` and reaches
into its internals from here only until it moves there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy import delete, insert, select

from store import CreatedRun, NewEvent, Publish, Router, Store, _ids
from store._appending import append_events, settle_run
from store._tables import outbox, runs


@dataclass(frozen=True)
class RunRequest:
    trigger: NewEvent
    dedupe_key: str | None = None
    trace_id: str | None = None
    root_span_id: str | None = None
    answer: Future[CreatedRun] = field(default_factory=Future, compare=False)


def create_runs(
    store: Store,
    requests: Sequence[RunRequest],
    router: Router,
    *,
    published: Sequence[str] = (),
) -> list[CreatedRun]:
    """``create_run`` for each request, in one transaction; a key seen earlier (in the store or
    in the batch) gets the first run, ``created`` False. ``published`` are message ids the
    broker has taken since the last commit: their outbox rows are deleted in the same one."""
    now = time.time()
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
                        "status": "running",
                        "trigger_type": request.trigger.type,
                        "trigger_event_id": _ids.trigger_event_id(run_id),
                        "agent": None,
                        "parent_run_id": None,
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
                settle_run(connection, run_id, "running", now)
    return [
        CreatedRun(a.run_id, True, messages[a.run_id], a.subscribed) if a.created else a
        for a in answers
    ]
