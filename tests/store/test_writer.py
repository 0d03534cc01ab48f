"""SQLite's writer: turns that queue behind each other commit together, each all or nothing,
and no thread returns before the commit that holds its work."""

from __future__ import annotations

import ctypes
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from store import Store, WriterBusy, upgrade
from store import _hot as hot
from store._tables import actor_catalog

pytestmark = pytest.mark.sqlite


class Refused(Exception):
    pass


def write(connection: Any, name: str) -> None:
    connection.execute(
        insert(actor_catalog),
        [{"name": name, "module": "m", "queue": "q", "event_types": [], "updated_at": 0.0}],
    )


def stored(store: Store) -> set[str]:
    with store.read() as connection:
        return set(connection.execute(select(actor_catalog.c.name)).scalars())


def waiting(store: Store, threads: int) -> None:
    deadline = time.monotonic() + 10
    while store._writer is not None and len(store._writer._waiting) < threads:
        assert time.monotonic() < deadline, "the other writers never queued"
        time.sleep(0.01)


def test_turns_that_queued_commit_together_and_a_failed_one_alone_rolls_back(
    store: Store,
) -> None:
    # Given a writer whose first turn holds on until three more turns queue behind it
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _connection: commits.append(1))
    seen_on_return: dict[str, bool] = {}
    raised: dict[str, BaseException] = {}
    inside, queued = threading.Event(), threading.Event()

    def turn(name: str, fail: bool = False) -> None:
        try:
            with store.transaction() as connection:
                write(connection, name)
                if name == "first":
                    inside.set()
                    queued.wait(10)
                if fail:
                    raise Refused(name)
        except Refused as error:
            raised[name] = error
            return
        seen_on_return[name] = name in stored(store)

    first = threading.Thread(target=turn, args=("first",))
    first.start()
    assert inside.wait(10)
    others = [
        threading.Thread(target=turn, args=(name, name == "refused"))
        for name in ("second", "refused", "third")
    ]
    for thread in others:
        thread.start()
    # When they have all queued and the first turn ends
    waiting(store, 3)
    queued.set()
    for thread in [first, *others]:
        thread.join(timeout=10)

    # Then the refused turn's row is gone and every other row is stored, by one commit
    assert stored(store) == {"first", "second", "third"}
    assert isinstance(raised["refused"], Refused)
    assert len(commits) == 1
    # And each thread that returned could already read its own row: it waited for the commit
    assert seen_on_return == {"first": True, "second": True, "third": True}


def test_a_turn_that_fails_alone_rolls_back_and_the_writer_goes_on(store: Store) -> None:
    # Given a transaction that fails on its own
    with pytest.raises(Refused), store.transaction() as connection:
        write(connection, "lost")
        raise Refused("lost")

    # When the next one writes
    with store.transaction() as connection:
        write(connection, "kept")

    # Then only its row is stored
    assert stored(store) == {"kept"}


class Interrupted(BaseException):
    """What Dramatiq injects into a worker thread when its step's time limit passes."""


def interrupt(thread: threading.Thread) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(Interrupted)
    )


def test_a_writer_interrupted_while_queued_leaves_the_lock_and_the_file_free(
    store: Store,
) -> None:
    # Given a thread holding the writer's turn and another queued behind it
    release = threading.Event()
    outcomes: dict[str, str] = {}

    def holder() -> None:
        with store.transaction() as connection:
            write(connection, "held")
            release.wait(5)
        outcomes["holder"] = "committed"

    def queued() -> None:
        try:
            with store.transaction() as connection:
                write(connection, "queued")
            outcomes["queued"] = "committed"
        except Interrupted:
            outcomes["queued"] = "interrupted"

    first = threading.Thread(target=holder)
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=queued)
    second.start()
    waiting(store, 1)

    # When the queued thread is interrupted (a time limit) as it gets the lock
    interrupt(second)
    release.set()
    first.join(5)
    second.join(5)

    # Then both threads ended, the holder's write is stored, and the next writer gets its turn
    assert not first.is_alive() and not second.is_alive()
    assert outcomes["holder"] == "committed"
    with store.transaction() as connection:
        write(connection, "later")
    assert {"held", "later"} <= stored(store)
    # And another process can take SQLite's write lock: no transaction was left open
    other = sqlite3.connect(str(store.engine.url.database), timeout=1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()


def test_a_commit_that_fails_leaves_no_transaction_open(store: Store) -> None:
    # Given a table whose foreign key is only checked at COMMIT
    with store.transaction() as connection:
        connection.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        connection.exec_driver_sql(
            "CREATE TABLE child (parent INTEGER REFERENCES parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )

    # When a transaction's COMMIT fails
    with pytest.raises(Exception, match="FOREIGN KEY"), store.transaction() as connection:
        connection.exec_driver_sql("INSERT INTO child VALUES (99)")

    # Then the next transaction works, and nothing of the failed one was stored
    with store.transaction() as connection:
        connection.exec_driver_sql("INSERT INTO parent VALUES (1)")
    with store.read() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM child").scalar() == 0
        assert connection.exec_driver_sql("SELECT count(*) FROM parent").scalar() == 1


def test_the_hot_statements_of_one_read_see_one_snapshot(store: Store) -> None:
    # Given a read that has run a hot statement
    count = hot.Statement("SELECT count(*) AS n FROM actor_catalog")
    with store.read() as connection:
        before = count.run(connection, {}).first().n

        # When another thread commits a row meanwhile
        def other() -> None:
            with store.transaction() as writer:
                write(writer, "meanwhile")

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(5)

        # Then the read's next statement still sees what its first saw
        assert count.run(connection, {}).first().n == before
    assert "meanwhile" in stored(store)


def test_a_write_that_must_not_wait_is_refused_while_another_thread_writes(
    store: Store,
) -> None:
    # Given a thread in the middle of its turn on the writer
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.transaction() as connection:
            write(connection, "held")
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(5)

    # When a write that must not wait (an event loop's) asks for the writer
    try:
        with pytest.raises(WriterBusy), store.transaction(wait=False) as connection:
            write(connection, "loop")
    finally:
        release.set()
        thread.join(5)

    # Then it was refused with nothing done, and the holder's turn committed as usual
    assert stored(store) == {"held"}
    # And once the writer is free, the same write goes through at once
    with store.transaction(wait=False) as connection:
        write(connection, "loop")
    assert stored(store) == {"held", "loop"}


def test_a_write_that_must_not_wait_does_not_wait_for_another_process(store: Store) -> None:
    # Given a store in use, and another process holding SQLite's write lock (the busy
    # timeout is 30 s)
    with store.transaction() as connection:
        write(connection, "before")
    other = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        # When a write that must not wait asks for the writer
        began = time.monotonic()
        with pytest.raises(WriterBusy), store.transaction(wait=False) as connection:
            write(connection, "loop")

        # Then it is refused at once instead of after the busy timeout, with nothing done
        assert time.monotonic() - began < 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert stored(store) == {"before"}
    # And the writer waits for other processes again, as every other write must
    assert store._writer is not None and store._writer._connection is not None
    driver = store._writer._connection.connection.dbapi_connection
    assert driver is not None
    assert driver.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    with store.transaction(wait=False) as connection:
        write(connection, "loop")
    assert stored(store) == {"before", "loop"}


def test_a_write_that_must_not_wait_leaves_opening_the_connection_to_one_that_may(
    store: Store,
) -> None:
    # Given a store that has not written yet (opening its writer meets SQLite's busy handler)
    # When a write that must not wait asks for the writer
    with pytest.raises(WriterBusy), store.transaction(wait=False) as connection:
        write(connection, "loop")

    # Then it was refused with nothing done; an ordinary write opens the writer, and after
    # it the same write goes through at once
    with store.transaction() as connection:
        write(connection, "thread")
    with store.transaction(wait=False) as connection:
        write(connection, "loop")
    assert stored(store) == {"thread", "loop"}


def test_a_new_store_opened_while_another_process_writes_waits_its_turn(tmp_path: Path) -> None:
    # Given a database just created by `baton db upgrade`, and another process holding
    # SQLite's write lock for a second
    path = tmp_path / "new.db"
    upgrade(f"sqlite:///{path}")
    other = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(1.0, lambda: other.execute("ROLLBACK"))
    releaser.start()

    # When a worker's store writes for the first time meanwhile
    store = Store(f"sqlite:///{path}")
    try:
        began = time.monotonic()
        with store.transaction() as connection:
            write(connection, "first")
        waited = time.monotonic() - began
    finally:
        releaser.join(5)
        other.close()

    # Then it waited for the lock (instead of failing at once on switching to WAL) and wrote
    assert waited >= 0.5
    assert stored(store) == {"first"}
    store.dispose()
