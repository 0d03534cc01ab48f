"""The dead-letter list: steps that failed for good, and messages no worker could take.

Both stay in the store until an operator replays or discards them (Redis keeps its own dead
letters for seven days only). Items are grouped by (kind, actor, error type). Failed steps
are read through the steps' state index, dead letters through (discarded_at, created_at);
every read is bounded by ``limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select

from store import _ids
from store._dead_letter_messages import actor_named_in, decode_pointer, error_type_of
from store._engine import Store
from store._errors import NotFound
from store._model import STEP_FAILED
from store._tables import dead_letters, steps

KIND_STEP = "step"
KIND_MESSAGE = "message"


@dataclass(frozen=True)
class DeadLetterFilter:
    actor: str | None = None  # part of the actor's name
    error: str | None = None  # part of the error type, in any case
    since: float | None = None
    limit: int = 10_000  # items read per kind at most


@dataclass(frozen=True)
class DeadLetterItem:
    """One failed step (id: the step's id) or one dead-lettered message (id: ``dl-N``)."""

    id: str
    kind: str
    group: str
    actor: str | None
    error_type: str
    error_message: str
    run_id: str | None
    seen_at: float


def group_key(kind: str, actor: str | None, error_type: str) -> str:
    """A short, stable name for a group, to pass back to show, replay and discard."""
    return "g-" + _ids.derive_id("dead-letters", kind, actor or "", error_type)[:10]


def dead_letter_groups(store: Store, where: DeadLetterFilter) -> list[dict[str, Any]]:
    """Groups of (kind, actor, error type) with counts and first and last seen, newest first."""
    with store.read() as connection:
        rows = connection.execute(
            select(
                steps.c.actor,
                steps.c.error_type,
                func.count().label("count"),
                func.count(steps.c.run_id.distinct()).label("runs"),
                func.min(steps.c.finished_at).label("first_seen"),
                func.max(steps.c.finished_at).label("last_seen"),
            )
            .where(*_failed_steps(where))
            .group_by(steps.c.actor, steps.c.error_type)
            .limit(where.limit)
        ).all()
        groups = []
        for row in rows:
            last_error = connection.execute(
                select(steps.c.error_message)
                .where(
                    *_failed_steps(where),
                    steps.c.actor == row.actor,
                    _same(steps.c.error_type, row.error_type),
                )
                .order_by(steps.c.finished_at.desc())
                .limit(1)
            ).scalar()
            error_type = row.error_type or "Error"
            groups.append(
                {
                    "group": group_key(KIND_STEP, row.actor, error_type),
                    "kind": KIND_STEP,
                    "actor": row.actor,
                    "error_type": error_type,
                    "count": row.count,
                    "runs": row.runs,
                    "first_seen": row.first_seen,
                    "last_seen": row.last_seen,
                    "last_error": last_error or "",
                    "replayable": "yes",
                }
            )
    # Newest first: a group's first item gives its last error and when it was last seen.
    messages: dict[str, dict[str, Any]] = {}
    message_runs: dict[str, set[str]] = {}
    for item in _message_items(store, where):
        group = messages.setdefault(
            item.group,
            {
                "group": item.group,
                "kind": KIND_MESSAGE,
                "actor": item.actor,
                "error_type": item.error_type,
                "count": 0,
                "runs": 0,
                "first_seen": item.seen_at,
                "last_seen": item.seen_at,
                "last_error": item.error_message,
                "replayable": "no" if item.error_type == "UndecodableMessage" else "maybe",
            },
        )
        group["count"] += 1
        group["first_seen"] = min(group["first_seen"], item.seen_at)
        if item.run_id:
            message_runs.setdefault(item.group, set()).add(item.run_id)
            group["runs"] = len(message_runs[item.group])
    return sorted([*groups, *messages.values()], key=lambda g: g["last_seen"], reverse=True)


def dead_letter_items(
    store: Store, where: DeadLetterFilter, targets: Sequence[str] = ()
) -> list[DeadLetterItem]:
    """The items the filter selects; with ``targets`` (ids, ``dl-N``, group names) only those.

    A target that names nothing raises NotFound, so a typo never turns into "everything".
    """
    if not targets:
        return [*_step_items(store, where), *_message_items(store, where)]
    chosen: dict[str, DeadLetterItem] = {}
    for target in targets:
        found = _resolve(store, where, target)
        if not found:
            raise NotFound(
                f"no dead letter or failed step {target!r}; see `baton dlq list` for groups "
                "and `baton dlq show GROUP` for their items"
            )
        chosen.update((item.id, item) for item in found)
    return list(chosen.values())


def _resolve(store: Store, where: DeadLetterFilter, target: str) -> list[DeadLetterItem]:
    if target.startswith("g-"):
        return [
            item
            for item in [*_step_items(store, where), *_message_items(store, where)]
            if item.group == target
        ]
    if names_dead_letter(target):
        return _message_items(store, where, only=dead_letter_number(target))
    found = _step_items(store, where, only=target)
    if len(found) > 1 and not any(item.id == target for item in found):
        raise NotFound(f"{target!r} matches {len(found)} failed steps; give more characters")
    return [item for item in found if item.id == target] or found


# Bare digits this long may be part of a step id the list shows (hex can be all digits).
_STEP_PREFIX_LENGTH = _ids.FEWEST
_LARGEST_ID = 2**31 - 1


def names_dead_letter(target: str) -> bool:
    """Whether ``target`` is a dead letter's id (dl-17, or a short bare 17), not a step's."""
    return target.startswith("dl-") or (target.isdigit() and len(target) < _STEP_PREFIX_LENGTH)


def dead_letter_number(target: str) -> int:
    text = target.removeprefix("dl-")
    if not text.isdigit() or int(text) > _LARGEST_ID:
        raise NotFound(f"{target!r} is not a dead letter id; they look like dl-17")
    return int(text)


def _failed_steps(where: DeadLetterFilter) -> list[Any]:
    conditions = [
        steps.c.state == STEP_FAILED,
        or_(steps.c.discarded_at.is_(None), steps.c.discarded_at < steps.c.finished_at),
    ]
    if where.since is not None:
        conditions.append(steps.c.finished_at >= where.since)
    if where.actor:
        conditions.append(steps.c.actor.contains(where.actor, autoescape=True))
    if where.error:
        conditions.append(
            func.lower(steps.c.error_type).contains(where.error.lower(), autoescape=True)
        )
    return conditions


def _same(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value


def _step_items(
    store: Store, where: DeadLetterFilter, only: str | None = None
) -> list[DeadLetterItem]:
    query = select(
        steps.c.id,
        steps.c.run_id,
        steps.c.actor,
        steps.c.error_type,
        steps.c.error_message,
        steps.c.finished_at,
    ).where(*_failed_steps(where))
    if only is not None:
        # A step id, or its first or last characters (the list shows the last 12).
        query = query.where(_ids.matching(steps.c.id, only))
    with store.read() as connection:
        rows = connection.execute(
            query.order_by(steps.c.finished_at.desc()).limit(where.limit)
        ).all()
    return [
        DeadLetterItem(
            id=row.id,
            kind=KIND_STEP,
            group=group_key(KIND_STEP, row.actor, row.error_type or "Error"),
            actor=row.actor,
            error_type=row.error_type or "Error",
            error_message=row.error_message or "",
            run_id=row.run_id,
            seen_at=row.finished_at or 0.0,
        )
        for row in rows
    ]


def _message_items(
    store: Store, where: DeadLetterFilter, only: int | None = None
) -> list[DeadLetterItem]:
    query = select(dead_letters).where(dead_letters.c.discarded_at.is_(None))
    if where.since is not None:
        query = query.where(dead_letters.c.created_at >= where.since)
    if only is not None:
        query = query.where(dead_letters.c.id == only)
    with store.read() as connection:
        rows = connection.execute(
            query.order_by(dead_letters.c.created_at.desc()).limit(where.limit)
        ).all()
    items = []
    for row in rows:
        pointer, _ = decode_pointer(row.raw)
        actor = row.actor or actor_named_in(row.raw)
        error_type = error_type_of(row.reason)
        if where.actor and where.actor not in (actor or ""):
            continue
        if where.error and where.error.lower() not in error_type.lower():
            continue
        items.append(
            DeadLetterItem(
                id=f"dl-{row.id}",
                kind=KIND_MESSAGE,
                group=group_key(KIND_MESSAGE, actor, error_type),
                actor=actor,
                error_type=error_type,
                error_message=row.reason,
                run_id=row.run_id or (pointer or {}).get("run_id"),
                seen_at=row.created_at,
            )
        )
    return items
