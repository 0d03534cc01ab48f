"""The fixed SQL of the step protocol's hot path, handed to the driver as it is.

Claim and commit run for every step, so their statements are written once here instead of
being rebuilt as SQLAlchemy expressions on every call: profiles of a no-op step showed two
thirds of its store time in building, keying and looking up compiled expressions, and 6% in
SQLite itself. The SQL is the same for SQLite and PostgreSQL; only the parameter style
differs (``:name`` vs ``%(name)s``), converted once when the module loads. Everything else
in the store keeps using SQLAlchemy expressions.

On SQLite the statements go to the driver's own connection, past SQLAlchemy's execution
context and result objects (half of a no-op step's store time once the SQL was fixed),
unless something listens for statements on the engine (a test's statement log, the
benchmarks' meter, an instrumentation): then they take SQLAlchemy's path and are seen.
"""

from __future__ import annotations

import contextvars
import json
import re
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")

# The SQLite connection whose transaction this thread is in and whose statements nothing
# observes: decided once per turn of the writer (``store._writer``), not per statement.
direct: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "baton_direct_connection", default=None
)


class Rows(Protocol):
    """What callers read from a hot statement: SQLAlchemy's CursorResult, or the driver's rows."""

    @property
    def rowcount(self) -> int: ...

    def first(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Statement:
    """One SQL text, ready for both drivers' parameter styles."""

    def __init__(self, sql: str) -> None:
        self.sqlite = " ".join(sql.split())
        self.postgresql = _PARAMETER.sub(r"%(\1)s", self.sqlite)
        # Rows of a SELECT by column name, as SQLAlchemy's rows are; made on first use.
        self._row: Any = None

    def run(
        self, connection: Connection, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> Rows:
        driver = _driver(connection)
        if driver is None:
            sql = self.postgresql if connection.dialect.name == "postgresql" else self.sqlite
            return connection.exec_driver_sql(sql, parameters)
        try:
            # A dict is the usual case; isinstance(…, Mapping) is an ABC check, slower.
            if type(parameters) is dict or isinstance(parameters, Mapping):
                cursor = driver.execute(self.sqlite, parameters)
            else:
                cursor = driver.executemany(self.sqlite, parameters)
        except sqlite3.Error as error:
            raise _wrapped(error, self.sqlite, parameters, connection) from error
        if cursor.description is None:
            return _DriverRows(cursor.rowcount, [])
        row = self._row
        if row is None:
            row = self._row = namedtuple("Row", [column[0] for column in cursor.description])
        return _DriverRows(cursor.rowcount, [row._make(values) for values in cursor])


class Values:
    """An SQL text with positional parameters (``?``), such as a multi-row INSERT whose
    length varies; ``run`` returns the rows of a SELECT as tuples."""

    def __init__(self, sql: str) -> None:
        self.sqlite = " ".join(sql.split())
        self.postgresql = self.sqlite.replace("?", "%s")

    def run(self, connection: Connection, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        driver = _driver(connection)
        if driver is None:
            sql = self.postgresql if connection.dialect.name == "postgresql" else self.sqlite
            result = connection.exec_driver_sql(sql, tuple(values))
            return [tuple(row) for row in result] if result.returns_rows else []
        try:
            cursor = driver.execute(self.sqlite, values)
        except sqlite3.Error as error:
            raise _wrapped(error, self.sqlite, values, connection) from error
        return cursor.fetchall() if cursor.description is not None else []


def _driver(connection: Connection) -> sqlite3.Connection | None:
    """SQLite's own connection when the statement may go to it directly; None when it must go
    through SQLAlchemy (PostgreSQL, or something listens to the engine's statements)."""
    if direct.get() is not connection:
        if connection.dialect.name == "postgresql" or observed(connection):
            return None
        if not connection.in_transaction():
            # What SQLAlchemy's autobegin would do (BEGIN, by the engine's hook), so the
            # statements of one read see one snapshot.
            connection.begin()
    return cast(sqlite3.Connection, connection.connection.dbapi_connection)


class _DriverRows:
    __slots__ = ("_rows", "rowcount")

    def __init__(self, rowcount: int, rows: list[Any]) -> None:
        self.rowcount = rowcount
        self._rows = rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


def observed(connection: Connection) -> bool:
    """Whether something listens for this connection's statements (they must go through
    SQLAlchemy to be seen)."""
    dispatch = connection.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)


def execute_on_driver(connection: Connection, sql: str) -> None:
    """Run one statement without parameters on SQLite's own connection, errors as
    SQLAlchemy raises them (BEGIN and the savepoints of the writer's turns)."""
    driver = connection.connection.dbapi_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        driver.execute(sql)
    except sqlite3.Error as error:
        raise _wrapped(error, sql, None, connection) from error


def _wrapped(error: sqlite3.Error, sql: str, parameters: Any, connection: Connection) -> Exception:
    # The exception SQLAlchemy would have raised (OperationalError, IntegrityError...), so
    # callers that translate or retry on those see no difference.
    wrapped = DBAPIError.instance(sql, parameters, error, sqlite3.Error, dialect=connection.dialect)
    assert isinstance(wrapped, Exception)
    return wrapped


def json_in(connection: Connection, value: Any) -> Any:
    """A JSON value as the driver takes it for a JSON column."""
    if connection.dialect.name == "postgresql":
        from psycopg.types.json import Json

        return Json(value)
    return json.dumps(value)


def json_text_in(connection: Connection, text: str) -> Any:
    """JSON already serialised, as the driver takes it for a JSON column (not parsed again)."""
    if connection.dialect.name == "postgresql":
        from psycopg.types.json import Json

        return Json(text, dumps=_as_is)
    return text


def _as_is(text: Any) -> str:
    return str(text)


def json_reader(connection: Connection) -> Callable[[Any], Any]:
    """How to read a JSON column on the driver's rows: psycopg parses it; SQLite gives text."""
    if connection.dialect.name == "postgresql":
        return _unchanged
    return _parsed


def _unchanged(value: Any) -> Any:
    return value


def _parsed(value: Any) -> Any:
    return None if value is None else json.loads(value)


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
           e.position AS event_position,
           (SELECT count(*) FROM step_attempts a
            WHERE a.step_id = s.id AND a.attempt > s.attempt_base AND a.outcome = 'waiting')
               AS parked
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

RUN_READ = Statement("SELECT status, trace_id, recorded FROM runs WHERE id = :id")
RUN_LOCK = Statement("SELECT status, trace_id, recorded FROM runs WHERE id = :id FOR UPDATE")

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
                       max_retries, available_at, lease_owner, lease_expires_at, message_id,
                       published_at, traceparent, join_expected, join_arrived, created_at,
                       started_at, origin_step_id)
    VALUES (:id, :run_id, :event_id, :actor, :queue, :state, :attempts, :attempt_base,
            :max_retries, :available_at, :lease_owner, :lease_expires_at, :message_id,
            :published_at, :traceparent, :join_expected, :join_arrived, :created_at,
            :started_at, :origin_step_id)
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
