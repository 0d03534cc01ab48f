"""One dead letter whole: a failed step with its run and its last attempt's traceback, or a
message with its bytes and the step they point at. Reads by primary key, or by the first
characters of a step's id or the last ones of a failed step's (as the list shows them)."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select

from store._dead_letter_messages import actor_named_in, decode_pointer, error_type_of, shown_bytes
from store._dead_letters import (
    KIND_MESSAGE,
    KIND_STEP,
    dead_letter_number,
    group_key,
    names_dead_letter,
)
from store._engine import Store
from store._errors import NotFound
from store._ids import FEWEST
from store._model import STEP_FAILED
from store._tables import dead_letters, runs, step_attempts, steps


def dead_letter_detail(store: Store, item_id: str) -> dict[str, Any]:
    """One item whole: a step with its run and last attempt's traceback, or a message with
    its bytes (repr, truncated; base64 in full) and the step it points at, if any."""
    if names_dead_letter(item_id):
        return _message_detail(store, dead_letter_number(item_id))
    with store.read() as connection:
        step = connection.execute(select(steps).where(steps.c.id == item_id)).first()
        if step is None and len(item_id) >= FEWEST:
            # The first characters, through the primary key's range; or the last ones (the
            # list shows those), among failed steps, through the index on the state.
            found = (
                connection.execute(
                    select(steps).where(steps.c.id.startswith(item_id, autoescape=True)).limit(2)
                ).all()
                or connection.execute(
                    select(steps)
                    .where(
                        steps.c.state == STEP_FAILED, steps.c.id.endswith(item_id, autoescape=True)
                    )
                    .limit(2)
                ).all()
            )
            if len(found) > 1:
                raise NotFound(f"{item_id!r} matches several steps; give more characters")
            step = found[0] if found else None
        if step is None:
            raise NotFound(f"no step {item_id!r}; see `baton dlq list`")
        last_attempt = connection.execute(
            select(step_attempts)
            .where(step_attempts.c.step_id == step.id)
            .order_by(step_attempts.c.attempt.desc())
            .limit(1)
        ).first()
        run_status = connection.execute(
            select(runs.c.status).where(runs.c.id == step.run_id)
        ).scalar()
    return {
        "id": step.id,
        "kind": KIND_STEP,
        "group": group_key(KIND_STEP, step.actor, step.error_type or "Error"),
        "step": dict(step._mapping),
        "run_status": run_status,
        "last_attempt": None if last_attempt is None else dict(last_attempt._mapping),
    }


def _message_detail(store: Store, number: int) -> dict[str, Any]:
    with store.read() as connection:
        row = connection.execute(select(dead_letters).where(dead_letters.c.id == number)).first()
        if row is None:
            raise NotFound(f"no dead letter dl-{number}; see `baton dlq list`")
        pointer, why_not = decode_pointer(row.raw)
        step_state = None
        if pointer is not None:
            step_state = connection.execute(
                select(steps.c.state).where(steps.c.id == pointer["step_id"])
            ).scalar()
    actor = row.actor or actor_named_in(row.raw)
    error_type = error_type_of(row.reason)
    return {
        "id": f"dl-{row.id}",
        "kind": KIND_MESSAGE,
        "group": group_key(KIND_MESSAGE, actor, error_type),
        "queue": row.queue,
        "actor": actor,
        "error_type": error_type,
        "reason": row.reason,
        "created_at": row.created_at,
        "discarded_at": row.discarded_at,
        "raw_size": len(row.raw),
        "raw_repr": shown_bytes(row.raw),
        "raw_base64": base64.b64encode(row.raw).decode(),
        "pointer": pointer,
        "not_a_pointer": why_not or None,
        "step_state": step_state,
    }
