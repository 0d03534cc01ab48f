"""SQLite's one writer: a kept connection, turns, group commit, and a checkpointer.

SQLite takes one writer at a time, so the threads of a process take turns on one connection,
kept open (checking one out of the pool per transaction cost more than a no-op step's SQL).

A thread whose turn ends while others wait for theirs leaves the transaction open for them,
and the last of them commits for all: a group commit. Each turn after the first is a
savepoint of its own, so a turn that fails rolls back alone; every thread returns only once
the commit that holds its work is done, so what it publishes afterwards is in the store.
A commit's cost (the WAL frames of the pages it changed, SQLite's locks) is then shared by
the state changes waiting together instead of paid by each.

A background thread checkpoints the WAL instead of the commit that happens to cross SQLite's
threshold, which doubled the average commit's time inside the writers' critical section.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Connection, Engine, RootTransaction

from store import _hot as hot
from store._appending import FINISHED_RUNS
from store._errors import StoreUnavailable, WriterBusy

_logger = logging.getLogger("baton.store")

# How often the WAL is copied back into the database file, off the writers' path.
CHECKPOINT_EVERY_SECONDS = 0.2
# Turns one commit may hold; a thread waits for its commit before its next turn, so in
# practice a group is at most as large as the number of writing threads.
_MOST_TURNS = 64
# A thread waiting for its group's commit this long looks whether the group was left open.
_RESCUE_AFTER_SECONDS = 0.5

# Every writer of this process: a forked child starts each one afresh (see _forked).
_writers: weakref.WeakSet[SQLiteWriter] = weakref.WeakSet()


class _Group:
    """One open transaction and the turns it holds."""

    __slots__ = ("direct", "done", "error", "transaction", "turns")

    def __init__(self, transaction: RootTransaction, direct: Connection | None) -> None:
        self.transaction = transaction
        # The connection when nothing observes its statements (hot.direct), checked once.
        self.direct = direct
        self.turns = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class SQLiteWriter:
    """Turns on the writer connection of one Store (see the module's docstring)."""

    def __init__(self, engine: Engine, read_engine: Engine, busy_timeout_ms: int) -> None:
        self.engine = engine
        self.read_engine = read_engine
        self.busy_timeout_ms = busy_timeout_ms
        self._start_afresh()
        _writers.add(self)

    def _start_afresh(self) -> None:
        self.lock = threading.Lock()
        # A ticket per thread waiting for its turn (adding and discarding are atomic).
        self._waiting: set[object] = set()
        self._connection: Connection | None = None
        self._pool: Any = None
        self._group: _Group | None = None
        self._checkpointer: _Checkpointer | None = None

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[Connection]:
        """A turn on the writer, committed with the group it joins (see the module).

        ``wait=False`` is for a caller that must not block, an event loop: the turn is taken
        only if neither this process's threads nor another process hold the writer, else
        WriterBusy is raised with nothing done; and it commits at its end instead of leaving
        the group to a thread that waits.
        """
        if not wait:
            if not self.lock.acquire(blocking=False):
                raise WriterBusy("another thread of this process is writing")
            try:
                group = self._turn_begins(wait=False)
                with self._turn(group) as connection:
                    yield connection
                self._commit(group)
            finally:
                self.lock.release()
            return
        # Counted as waiting until the lock is ours. The lock is taken by ``with``, never a
        # bare acquire(): an exception Dramatiq injects into the thread (a time limit, a
        # shutdown) while it waits must not leave the lock, or an open group, held.
        ticket = object()
        self._waiting.add(ticket)
        try:
            with self.lock:
                self._waiting.discard(ticket)
                group = self._turn_begins()
                with self._turn(group) as connection:
                    yield connection
                if not self._waiting or group.turns >= _MOST_TURNS:
                    self._commit(group)
                    return
        finally:
            # Again, idempotently: an exception may land before the first discard.
            self._waiting.discard(ticket)
        self._wait_for(group)

    @contextmanager
    def _turn(self, group: _Group) -> Iterator[Connection]:
        """This thread's work in ``group`` (the lock is held): a savepoint of its own unless
        it began the group, undone alone if it fails."""
        joined = group.turns > 1
        connection = self._connection
        assert connection is not None
        finished = connection.info.get(FINISHED_RUNS)
        notes = len(finished) if finished is not None else 0
        if joined:
            self._settle(group, lambda: _execute(connection, group.direct, _SAVEPOINT))
        token = hot.direct.set(group.direct)
        try:
            yield connection
        except BaseException as error:
            if joined:
                self._undo_turn(connection, group, notes)
            else:
                # The first turn is alone in its group: the whole transaction goes.
                self._fail(group, error)
            raise
        finally:
            _reset(token)
        if joined:
            self._settle(group, lambda: _execute(connection, group.direct, _RELEASE))

    def _turn_begins(self, *, wait: bool = True) -> _Group:
        """This thread's turn (the lock is held): join the open group or begin one."""
        group = self._group
        if group is None:
            connection = self._connection_for_turn(wait=wait)
            transaction = connection.begin() if wait else self._begin_now(connection)
            direct = None if hot.observed(connection) else connection
            group = self._group = _Group(transaction, direct)
        group.turns += 1
        return group

    def _begin_now(self, connection: Connection) -> RootTransaction:
        """BEGIN IMMEDIATE without SQLite's busy handler: WriterBusy if another process
        holds the write lock, instead of waiting up to the busy timeout for it."""
        driver = connection.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        restore = f"PRAGMA busy_timeout={self.busy_timeout_ms}"
        driver.execute("PRAGMA busy_timeout=0")
        try:
            transaction = connection.begin()
        except Exception as error:
            driver.execute(restore)
            cause = getattr(error, "orig", error)
            # Any kind of busy (extended codes: a WAL being recovered, a stale snapshot).
            if getattr(cause, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                raise WriterBusy("another process is writing") from error
            raise
        try:
            driver.execute(restore)
        except BaseException:
            # Never left holding SQLite's lock without a group: the next writer starts over.
            with suppress(Exception):
                transaction.rollback()
            connection.invalidate()
            self._connection = None
            raise
        return transaction

    def _undo_turn(self, connection: Connection, group: _Group, notes: int) -> None:
        def undo() -> None:
            _execute(connection, group.direct, "ROLLBACK TO baton_turn")
            _execute(connection, group.direct, _RELEASE)
            finished = connection.info.get(FINISHED_RUNS)
            if finished is not None:
                del finished[notes:]

        # The others' turns still commit: whoever runs last does it.
        self._settle(group, undo)
        if not self._waiting:
            self._commit(group)

    def _settle(self, group: _Group, statement: Any) -> None:
        try:
            statement()
        except BaseException as error:
            self._fail(group, error)
            raise

    def _commit(self, group: _Group) -> None:
        try:
            group.transaction.commit()
        except BaseException as error:
            self._fail(group, error)
            raise
        finally:
            # Whatever happens (an exception injected here too), the group is over and its
            # threads are woken: the committed ones find no error, the others their cause.
            self._group = None
            group.done.set()

    def _fail(self, group: _Group, error: BaseException) -> None:
        try:
            group.error = error
            self._group = None
            try:
                group.transaction.rollback()
            except Exception:
                _logger.debug("rolling back a failed group commit failed too", exc_info=True)
            self._leave_no_transaction_open()
        finally:
            group.done.set()

    def _leave_no_transaction_open(self) -> None:
        """After a failed commit SQLAlchemy sends no ROLLBACK, and the kept connection is never
        returned to the pool (which would send one): roll back on the driver, or start over."""
        connection = self._connection
        if connection is None:
            return
        try:
            driver = connection.connection.dbapi_connection
            if isinstance(driver, sqlite3.Connection) and driver.in_transaction:
                driver.rollback()
        except Exception:
            _logger.debug("the writer's connection is replaced", exc_info=True)
            connection.invalidate()
            self._connection = None

    def _wait_for(self, group: _Group) -> None:
        while not group.done.wait(_RESCUE_AFTER_SECONDS):
            with self.lock:
                if self._group is group:
                    # A thread counted as waiting never took its turn (interrupted): the
                    # group was left open. Commit it here.
                    self._commit(group)
                elif not group.done.is_set():
                    raise StoreUnavailable(
                        "a write shared with other threads was interrupted before it was "
                        "known to commit; its outcome is unknown, so retry it (a step is "
                        "retried by its lease)"
                    )
        if group.error is not None:
            raise StoreUnavailable(
                "a transaction committed together with this one failed, so nothing of this "
                f"one was stored ({group.error!r}); retry it"
            ) from group.error

    def _connection_for_turn(self, *, wait: bool = True) -> Connection:
        """The writer's connection (the lock is held). Opening one may wait (its set-up meets
        SQLite's busy handler): a turn that must not wait leaves that to one that may."""
        connection = self._connection
        if connection is not None:
            # Replaced after engine.dispose() (a test that instruments new connections), or
            # when invalidated, but never while a group is open on it.
            if self._group is not None or (
                not connection.invalidated
                and not connection.closed
                and self._pool is self.engine.pool
            ):
                return connection
            if not wait:
                raise WriterBusy("the writer's connection must be opened again")
            connection.close()
        elif not wait:
            raise WriterBusy("the writer has not opened its connection yet")
        connection = self._connection = self.engine.connect()
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self.read_engine, self.lock)
            self._checkpointer.start()
        self._pool = self.engine.pool
        return connection

    def close(self) -> None:
        # A writer stuck on another process's lock must not hold up shutting down: its
        # connection is then left to the garbage collector.
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            # Stopped without the lock held: its last round may be waiting for the lock.
            checkpointer.stop()
        if not self.lock.acquire(timeout=5):
            return
        try:
            if self._group is not None:
                self._commit(self._group)
            if self._connection is not None:
                self._connection.close()
            self._connection = None
            self._group = None
        finally:
            self.lock.release()


def _forked() -> None:
    # The parent's SQLite connections, its lock (perhaps held by a thread that does not exist
    # here) and its checkpointer are not the child's: it opens its own on its first write.
    for writer in list(_writers):
        writer.engine.dispose(close=False)
        writer.read_engine.dispose(close=False)
        writer._start_afresh()


os.register_at_fork(after_in_child=_forked)


_SAVEPOINT = "SAVEPOINT baton_turn"
_RELEASE = "RELEASE baton_turn"


def _reset(token: contextvars.Token[Connection | None]) -> None:
    try:
        hot.direct.reset(token)
    except ValueError:
        # Closed from another context (a generator collected elsewhere): nothing to reset.
        hot.direct.set(None)


def _execute(connection: Connection, direct: Connection | None, sql: str) -> None:
    if direct is connection:
        hot.execute_on_driver(connection, sql)
    else:
        connection.exec_driver_sql(sql)


class _Checkpointer(threading.Thread):
    """Copies committed WAL pages into the database file, beside the writers.

    PASSIVE, as SQLite's automatic checkpoint is: it never waits for readers or writers.
    Most pages are copied while this process's writers go on; the few they add meanwhile are
    copied with the writer lock held, so the WAL is fully copied and the next writer starts
    it over instead of letting it grow (each commit and read then searches a longer WAL).
    """

    def __init__(self, engine: Engine, writer_lock: threading.Lock) -> None:
        super().__init__(name="baton-sqlite-checkpoint", daemon=True)
        self.engine = engine
        self.writer_lock = writer_lock
        self._stopped = threading.Event()

    def run(self) -> None:
        connection: Any = None
        checkpoint = "PRAGMA wal_checkpoint(PASSIVE)"
        try:
            while not self._stopped.wait(CHECKPOINT_EVERY_SECONDS):
                try:
                    if connection is None:
                        connection = self.engine.raw_connection()
                    driver = connection.driver_connection
                    _, wal_frames, copied = driver.execute(checkpoint).fetchone()
                    if copied < wal_frames:
                        with self.writer_lock:
                            driver.execute(checkpoint).fetchone()
                except Exception:
                    _logger.debug("checkpoint failed; trying again", exc_info=True)
                    if connection is not None:
                        connection.invalidate()
                        connection = None
        finally:
            if connection is not None:
                connection.close()

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join(timeout=5)
