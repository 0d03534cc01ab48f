"""Engines and transactions: one code path for SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from store import _hot as hot
from store._errors import StoreError, StoreUnavailable, WriterBusy
from store._writer import SQLiteWriter


class Store:
    """The system of record at ``url``: a writer engine and a reader engine.

    On SQLite writers open with ``BEGIN IMMEDIATE`` (a writer waits for the lock up front
    instead of failing on upgrade) and readers stay deferred, so reads never queue behind
    writes; WAL lets both run at once. SQLite takes one writer at a time: the threads of a
    process take turns on one connection and commit in groups (``store._writer``). On
    PostgreSQL both are one engine.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 16) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(
                f"database URL {url!r} is not a URL; use sqlite:///PATH or "
                "postgresql+psycopg://USER:PASSWORD@HOST/DB"
            ) from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, busy_timeout_ms, immediate=True)
            self.read_engine = _sqlite_engine(url, busy_timeout_ms, immediate=False)
            # SQLite has one writer at a time. Threads of this process queue on a lock that
            # wakes the next one at once; only other processes meet SQLite's busy handler,
            # which sleeps up to 100 ms between tries.
            self._writer: SQLiteWriter | None = SQLiteWriter(
                self.engine, self.read_engine, busy_timeout_ms
            )
            # A Store dropped without dispose() must not leave its checkpointer running.
            # (Not at exit, where a daemon thread may hold the writer's lock.)
            weakref.finalize(self, self._writer.close).atexit = False
        elif self.dialect == "postgresql":
            if parsed.drivername == "postgresql":
                url = str(parsed.set(drivername="postgresql+psycopg"))
            self.engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=30,
                # A server that vanishes must not hang a worker's threads for TCP's hours.
                connect_args={
                    "connect_timeout": 10,
                    "keepalives": 1,
                    "keepalives_idle": 30,
                    "keepalives_interval": 10,
                    "keepalives_count": 3,
                },
            )
            self.read_engine = self.engine
            self._writer = None
        else:
            raise StoreError(
                f"database {self.dialect!r} is not supported; use SQLite or PostgreSQL"
            )

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[Connection]:
        """A write transaction: committed on exit, rolled back on error.

        ``wait=False`` (for an event loop): begin only if the write can start at once, else
        raise WriterBusy having done nothing. Only SQLite's writer can tell; on PostgreSQL
        every transaction waits on the network, so it always raises.
        """
        if self._writer is None:
            if not wait:
                raise WriterBusy("a PostgreSQL transaction waits on the network")
            with _translated(self.url), self.engine.begin() as connection:
                yield connection
            return
        with _translated(self.url), self._writer.transaction(wait=wait) as connection:
            yield connection

    @property
    def writes_without_waiting(self) -> bool:
        """Whether ``transaction(wait=False)`` can ever succeed (SQLite)."""
        return self._writer is not None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection."""
        with _translated(self.url), self.read_engine.connect() as connection:
            yield connection

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        with self.read() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


@contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except OperationalError as error:
        raise StoreUnavailable(
            f"the store at {_redacted(url)} cannot be used: {error.orig}; check that it is "
            "reachable and that `baton db upgrade` has been run"
        ) from error


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_engine(url: str, busy_timeout_ms: int, *, immediate: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        pool_size=8,
        max_overflow=32,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Autocommit at the driver level; SQLAlchemy's "begin" hook below issues BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # NORMAL in WAL mode is durable across process crashes; only an OS crash can lose the
        # last transactions, which is the usual trade for SQLite in WAL mode.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        if immediate:
            # The writer's checkpointer thread does it (store._writer).
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            # The one connection every write goes through keeps 64 MiB of pages (SQLite's
            # default is 2 MiB): each statement of a commit then finds its index pages in
            # memory instead of reading them again (a no-op step's commit: 630 -> 480 us).
            cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        if hot.observed(connection):
            connection.exec_driver_sql(begin)
        else:
            hot.execute_on_driver(connection, begin)

    return engine
