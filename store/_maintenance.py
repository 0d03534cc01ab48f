"""What the relay and the reconciler read and write: unconfirmed outbox rows, lost steps."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, insert, or_, select, update

from store import _ids
from store._appending import add_to_outbox, confirm_in
from store._engine import Store
from store._model import RUN_FAILED, STEP_PENDING, STEP_RUNNING, Publish
from store._steps import publish_from_outbox
from store._tables import dead_letters, outbox, runs, steps


def due_outbox(store: Store, older_than_seconds: float, limit: int = 500) -> list[Publish]:
    """Outbox rows nobody confirmed within ``older_than_seconds``: their publisher died."""
    cutoff = time.time() - older_than_seconds
    with store.read() as connection:
        rows = connection.execute(
            select(outbox)
            .where(outbox.c.created_at < cutoff)
            .order_by(outbox.c.created_at)
            .limit(limit)
        ).all()
    return [publish_from_outbox(r) for r in rows]


def confirm_published(store: Store, message_ids: Sequence[str]) -> None:
    """The broker has these messages: their outbox rows are done."""
    if not message_ids:
        return
    with store.transaction() as connection:
        confirm_in(connection, message_ids)


def reissue(store: Store, publish: Sequence[Publish]) -> list[Publish]:
    """Give lost messages fresh ids, recorded on their steps and in the outbox, so a re-send
    is never confused with the original in the broker, and one that fails to go out stays in
    the outbox for the next round."""
    if not publish:
        return []
    now = time.time()
    fresh = [
        Publish(
            _ids.new_message_id(), p.step_id, p.run_id, p.actor, p.queue, p.traceparent, p.delay_ms
        )
        for p in publish
    ]
    with store.transaction() as connection:
        connection.execute(
            delete(outbox).where(outbox.c.message_id.in_([p.message_id for p in publish]))
        )
        for p in fresh:
            connection.execute(
                update(steps)
                .where(steps.c.id == p.step_id)
                .values(message_id=p.message_id, published_at=now)
            )
        add_to_outbox(connection, fresh, now)
    return fresh


@dataclass(frozen=True)
class Suspect:
    """A step that should be moving but may have no live message."""

    publish: Publish
    reason: str  # lease-expired | no-message


def suspects(
    store: Store, *, stale_seconds: float, republish_after_seconds: float, limit: int = 500
) -> list[Suspect]:
    """Running steps whose lease expired, and pending steps not picked up for a while.

    A pending step is only a suspect; the reconciler re-sends it only if the broker has no
    message for it. Steps re-sent recently are left alone so a backlog is not flooded.
    """
    now = time.time()
    with store.read() as connection:
        expired = connection.execute(
            select(
                steps.c.id,
                steps.c.run_id,
                steps.c.actor,
                steps.c.queue,
                steps.c.traceparent,
                steps.c.message_id,
            )
            .where(
                steps.c.state == STEP_RUNNING,
                steps.c.lease_expires_at < now,
                or_(
                    steps.c.published_at.is_(None),
                    steps.c.published_at < now - min(stale_seconds, republish_after_seconds),
                ),
            )
            .limit(limit)
        ).all()
        stale = connection.execute(
            select(
                steps.c.id,
                steps.c.run_id,
                steps.c.actor,
                steps.c.queue,
                steps.c.traceparent,
                steps.c.message_id,
            )
            .where(
                steps.c.state == STEP_PENDING,
                steps.c.available_at < now - stale_seconds,
                # A failed run's pending steps are held until replay, not lost.
                steps.c.run_id.in_(
                    select(runs.c.id).where(
                        runs.c.id == steps.c.run_id, runs.c.status != RUN_FAILED
                    )
                ),
                or_(steps.c.published_at.is_(None), steps.c.published_at < now - stale_seconds),
                ~exists().where(and_(outbox.c.step_id == steps.c.id)),
            )
            .limit(limit)
        ).all()
    found = [
        Suspect(
            Publish(r.message_id or "", r.id, r.run_id, r.actor, r.queue, r.traceparent),
            "lease-expired",
        )
        for r in expired
    ]
    found += [
        Suspect(
            Publish(r.message_id or "", r.id, r.run_id, r.actor, r.queue, r.traceparent),
            "no-message",
        )
        for r in stale
    ]
    return found


def record_dead_letter(
    store: Store,
    *,
    queue: str,
    raw: bytes,
    reason: str,
    actor: str | None = None,
    run_id: str | None = None,
    step_id: str | None = None,
) -> None:
    with store.transaction() as connection:
        connection.execute(
            insert(dead_letters).values(
                queue=queue,
                actor=actor,
                raw=raw,
                reason=reason,
                run_id=run_id,
                step_id=step_id,
                created_at=time.time(),
            )
        )


def mark_seen(store: Store, step_ids: Sequence[str]) -> None:
    """The broker still holds these steps' messages: look again only after another interval."""
    if not step_ids:
        return
    with store.transaction() as connection:
        connection.execute(
            update(steps).where(steps.c.id.in_(step_ids)).values(published_at=time.time())
        )
