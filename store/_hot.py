"""The fixed SQL of the step protocol's hot path, handed to the driver as it is.

Claim and commit run for every step, so their statements are written once here instead of
being rebuilt as SQLAlchemy expressions on every call: profiles of a no-op step showed two
thirds of its store time in building, keying and looking up compiled expressions, and 6% in
SQLite itself. The SQL is the same for SQLite and PostgreSQL; only the parameter style
differs (``:name`` vs ``%(name)s``), converted once when the module loads. Everything else
in the store keeps using SQLAlchemy expressions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, CursorResult

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


class Statement:
    """One SQL text, ready for both drivers' parameter styles."""

    def __init__(self, sql: str) -> None:
        self.sqlite = " ".join(sql.split())
        self.postgresql = _PARAMETER.sub(r"%(\1)s", self.sqlite)

    def run(
        self, connection: Connection, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> CursorResult[Any]:
        sql = self.postgresql if connection.dialect.name == "postgresql" else self.sqlite
        return connection.exec_driver_sql(sql, parameters)


def json_in(connection: Connection, value: Any) -> Any:
    """A JSON value as the driver takes it for a JSON column."""
    if connection.dialect.name == "postgresql":
        from psycopg.types.json import Json

        return Json(value)
    return json.dumps(value)


def json_out(value: Any) -> Any:
    """A JSON column's value as Python data (SQLite hands back text, psycopg parsed data)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


CLAIM_READ = Statement(
    """
    SELECT s.state, s.run_id, s.actor, s.attempts, s.attempt_base, s.max_retries,
           s.available_at, s.lease_owner, s.lease_expires_at, s.traceparent, s.join_expected,
           s.event_id, s.origin_step_id,
           r.status AS run_status, r.trace_id, r.recorded,
           e.type AS event_type, e.data AS event_data, e.groups AS event_groups,
           e.position AS event_position
    FROM steps s JOIN runs r ON r.id = s.run_id JOIN events e ON e.id = s.event_id
    WHERE s.id = :id
    """
)

# On PostgreSQL the row is locked as it is read: a concurrent claim or retry cannot change it
# between this read and the conditional update (READ COMMITTED re-checks only the update).
CLAIM_READ_LOCKED = Statement(CLAIM_READ.sqlite + " FOR UPDATE OF s")

CLAIM_TAKE = Statement(
    """
    UPDATE steps SET state = 'running', lease_owner = :owner, lease_expires_at = :expires,
                     attempts = attempts + 1, started_at = :now, finished_at = NULL
    WHERE id = :id AND (state = 'pending' OR (state = 'running' AND lease_expires_at < :now))
    """
)

ATTEMPT_START = Statement(
    """
    INSERT INTO step_attempts (step_id, attempt, run_id, worker, started_at)
    VALUES (:step_id, :attempt, :run_id, :worker, :started_at)
    """
)

RUN_READ = Statement("SELECT status, trace_id FROM runs WHERE id = :id")
RUN_LOCK = Statement("SELECT status, trace_id FROM runs WHERE id = :id FOR UPDATE")

STEP_FINISH = Statement(
    """
    UPDATE steps SET state = :state, finished_at = :now, lease_owner = NULL,
                     lease_expires_at = NULL
    WHERE id = :id AND lease_owner = :owner AND attempts = :attempt AND state = 'running'
    """
)

ATTEMPT_END = Statement(
    """
    UPDATE step_attempts SET ended_at = :now, outcome = :outcome
    WHERE step_id = :id AND attempt = :attempt
    """
)

EVENTS_INSERT = Statement(
    """
    INSERT INTO events (id, run_id, type, data, cause_step_id, position, groups, created_at)
    VALUES (:id, :run_id, :type, :data, :cause_step_id, :position, :groups, :created_at)
    ON CONFLICT DO NOTHING
    """
)

STEPS_INSERT = Statement(
    """
    INSERT INTO steps (id, run_id, event_id, actor, queue, state, attempts, attempt_base,
                       max_retries, available_at, message_id, published_at, traceparent,
                       join_expected, join_arrived, created_at, origin_step_id)
    VALUES (:id, :run_id, :event_id, :actor, :queue, :state, :attempts, :attempt_base,
            :max_retries, :available_at, :message_id, :published_at, :traceparent,
            :join_expected, :join_arrived, :created_at, :origin_step_id)
    ON CONFLICT DO NOTHING
    """
)

OUTBOX_INSERT = Statement(
    """
    INSERT INTO outbox (message_id, step_id, run_id, actor, queue, traceparent, delay_ms,
                        created_at)
    VALUES (:message_id, :step_id, :run_id, :actor, :queue, :traceparent, :delay_ms,
            :created_at)
    """
)

OPEN_STEPS = Statement(
    """
    SELECT state, count(*) AS n FROM steps
    WHERE run_id = :run_id AND state IN ('pending', 'running', 'waiting', 'collecting', 'failed')
    GROUP BY state
    """
)

RUN_STATUS = Statement(
    """
    UPDATE runs SET status = :status, updated_at = :now, finished_at = :finished_at
    WHERE id = :id
    """
)
