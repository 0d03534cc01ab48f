"""O(1) per step (DESIGN invariant 8): step 1,000 of a run costs what step 10 costs.

A chain of 1,000 steps is driven through the real claim/commit functions. The statements
executed by one claim + memory read + commit are recorded at step 10 and at step 1,000 and
compared; on SQLite each statement's query plan must be an index search, never a scan, and
the work SQLite's virtual machine does must not grow with the run's history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event

from store import (
    NewEvent,
    Route,
    Store,
    claim_step,
    commit_step,
    confirm_published,
    create_run,
    read_memory,
    record_effect,
)

STEPS = 1_000
MEASURED = (10, STEPS)
ROUTES = {
    "t_cost.start": [Route("t_cost.tick", "default", 0)],
    "t_cost.tick": [Route("t_cost.tick", "default", 0)],
}
HISTORY_TABLES = ("events", "steps", "step_attempts", "memory", "outbox", "join_arrivals", "waits")


def router(event_type: str) -> Sequence[Route]:
    return ROUTES.get(event_type, [])


@dataclass
class Recording:
    statements: list[tuple[str, Any]] = field(default_factory=list)
    vm_steps: int = 0


@contextmanager
def recording(store: Store) -> Iterator[Recording]:
    """Record every statement (with its parameters) the store runs, and on SQLite the number
    of virtual-machine instructions spent, in blocks of 10."""
    recorded = Recording()

    def on_statement(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        recorded.statements.append((statement, parameters))
        dbapi = conn.connection.dbapi_connection
        if isinstance(dbapi, sqlite3.Connection):
            dbapi.set_progress_handler(count_vm_steps, 10)

    def count_vm_steps() -> int:
        recorded.vm_steps += 10
        return 0

    engines = {id(e): e for e in (store.engine, store.read_engine)}.values()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_statement)
    try:
        yield recorded
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_statement)
            if engine.dialect.name == "sqlite":
                # Pooled connections keep the handler otherwise.
                engine.dispose()


def query_plan(store: Store, statement: str, parameters: Any) -> list[str]:
    with store.read() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        return [row[3] for row in cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]


def test_step_one_thousand_costs_what_step_ten_costs(store: Store) -> None:
    # Given a run whose steps each read memory, then emit the next tick and write memory
    created = create_run(store, NewEvent("t_cost.start", {}), router)
    confirm_published(store, [p.message_id for p in created.publish])
    step_id = created.publish[0].step_id
    measured: dict[int, Recording] = {}
    # When it runs 1,000 steps, recording steps 10 and 1,000
    for number in range(1, STEPS + 1):
        with recording(store) if number in MEASURED else _nothing() as recorded:
            claimed = claim_step(store, step_id, "worker", 30.0)
            assert claimed.step is not None, claimed
            _, total = read_memory(store, claimed.step.run_id, "total")
            publish = commit_step(
                store,
                claimed.step,
                "worker",
                emitted=[NewEvent("t_cost.tick", {"i": number})],
                fan_out=False,
                memory_writes={"total": (total or 0) + number},
                router=router,
            )
        if recorded is not None:
            measured[number] = recorded
        confirm_published(store, [p.message_id for p in publish])
        [next_step] = publish
        step_id = next_step.step_id
    # Then the memory carried through all of them
    assert read_memory(store, created.run_id, "total") == (True, STEPS * (STEPS + 1) // 2)
    # And step 1,000 ran the same statements as step 10, as many of them
    early, late = measured[10], measured[STEPS]
    assert [s for s, _ in late.statements] == [s for s, _ in early.statements]
    assert len(late.statements) == len(early.statements) > 0
    if store.dialect != "sqlite":
        return
    # And no statement scans a table that grows with the run's history, nor reads all of a
    # run's rows in one (an index search on run_id alone): all are seeks to what they need
    for statement, parameters in late.statements:
        if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        for line in query_plan(store, statement, parameters):
            words = line.split()
            if not any(table in words for table in HISTORY_TABLES):
                continue
            assert not line.startswith("SCAN"), f"{line!r} in:\n{statement}"
            assert not line.endswith("(run_id=?)"), f"{line!r} reads a run's history:\n{statement}"
    # And SQLite did (nearly) no more work for step 1,000 than for step 10
    assert late.vm_steps <= early.vm_steps * 1.2 + 100, (early.vm_steps, late.vm_steps)


def test_an_effect_is_applied_once_per_idempotency_key(store: Store) -> None:
    # When one effect is recorded twice under the same key, and another under a new key
    first = record_effect(
        store, idempotency_key="k1", run_id=None, kind="t", target="x", payload={}
    )
    again = record_effect(
        store, idempotency_key="k1", run_id=None, kind="t", target="x", payload={}
    )
    other = record_effect(
        store, idempotency_key="k2", run_id=None, kind="t", target="x", payload={}
    )
    # Then the first and the new one say they applied it, the repeat says it did not
    assert (first, again, other) == (True, False, True)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
