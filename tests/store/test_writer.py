"""SQLite's writer: turns that queue behind each other commit together, each all or nothing,
and no thread returns before the commit that holds its work."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from store import Store
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
