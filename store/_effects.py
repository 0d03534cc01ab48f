"""Effects on the outside world, keyed by idempotency key: a stand-in for a real API."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from store._appending import insert_on_conflict_ignore
from store._engine import Store
from store._tables import effects


def record_effect(
    store: Store, *, idempotency_key: str, run_id: str | None, kind: str, target: str, payload: Any
) -> bool:
    """Apply an effect once per key; True when this call applied it, False for a repeat."""
    with store.transaction() as connection:
        applied = connection.execute(
            insert_on_conflict_ignore(connection, effects),
            [
                {
                    "idempotency_key": idempotency_key,
                    "run_id": run_id,
                    "kind": kind,
                    "target": target,
                    "payload": payload,
                    "created_at": time.time(),
                }
            ],
        )
    return applied.rowcount == 1


def effects_of_run(store: Store, run_id: str) -> list[dict[str, Any]]:
    with store.read() as connection:
        rows = connection.execute(
            select(effects).where(effects.c.run_id == run_id).order_by(effects.c.created_at)
        ).all()
    return [dict(row._mapping) for row in rows]
