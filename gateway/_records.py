"""The gateway's own reads and writes in the store: ignored deliveries and run counts.

These reach into the store's tables directly because the store has no public functions for
them yet; they belong in ``store`` (see the gateway's hand-over note).
"""

from __future__ import annotations

import time

from sqlalchemy import func, select

from store import Store
from store._appending import insert_on_conflict_ignore
from store._tables import deliveries, runs

RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "canceled")


def record_ignored(
    store: Store, *, source: str, delivery_id: str, event_type: str, dedupe_key: str
) -> str | None:
    """Record a delivery no actor subscribes to, once; one transaction.

    Returns the run id instead if this delivery already started a run (it was accepted while
    an actor subscribed to its type): a repeat is answered with that run.
    """
    with store.transaction() as connection:
        started = connection.execute(
            select(runs.c.id).where(runs.c.dedupe_key == dedupe_key)
        ).scalar()
        if started is not None:
            return str(started)
        connection.execute(
            insert_on_conflict_ignore(connection, deliveries),
            [
                {
                    "source": source,
                    "delivery_id": delivery_id,
                    "event_type": event_type,
                    "status": "ignored",
                    "run_id": None,
                    "created_at": time.time(),
                }
            ],
        )
    return None


def runs_by_status(store: Store) -> dict[str, int]:
    """How many runs are in each status, every status present (through the status index)."""
    with store.read() as connection:
        rows = connection.execute(select(runs.c.status, func.count()).group_by(runs.c.status)).all()
    counts = dict.fromkeys(RUN_STATUSES, 0)
    counts.update({str(status): int(count) for status, count in rows})
    return counts
