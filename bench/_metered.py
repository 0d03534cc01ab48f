"""A Store that times its write transactions and counts what each one sends to SQLite.

Each transaction is labelled with the store function that opened it (``claim_step``,
``commit_and_claim``, ``confirm_published``...) and, when that function works on one step, the
step's id. Statements are counted through SQLAlchemy's cursor events; "bytes written" is
the size of the parameters of INSERT, UPDATE and DELETE statements (strings and blobs by
length, numbers as 8 bytes): what the step asks the database to store, independent of
page layout and checkpoints.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, event

from store import Store, WriterBusy

_WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclass
class Transaction:
    label: str
    step_id: str | None
    thread: str
    started: float = 0.0
    seconds: float = 0.0
    ended_at: float = 0.0  # wall clock, comparable with the store's timestamps
    statements: int = 0
    writes: int = 0
    bytes_written: int = 0
    sql: list[str] = field(default_factory=list)


class MeteredStore(Store):
    """Store whose ``transaction()`` records a Transaction per call in ``self.transactions``."""

    def __init__(self, url: str, *, keep_sql: bool = False) -> None:
        super().__init__(url)
        self.transactions: list[Transaction] = []
        self.keep_sql = keep_sql
        self._current = threading.local()
        self._lock = threading.Lock()
        event.listen(self.engine, "before_cursor_execute", self._count)

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[Connection]:
        label, step_id = _opener()
        record = Transaction(label, step_id, threading.current_thread().name)
        self._current.record = record
        record.started = time.perf_counter()
        refused = False
        try:
            with super().transaction(wait=wait) as connection:
                yield connection
        except WriterBusy:
            # Refused before it began: made again where it may wait, and counted then.
            refused = True
            raise
        finally:
            record.seconds = time.perf_counter() - record.started
            record.ended_at = time.time()
            self._current.record = None
            if not refused:
                with self._lock:
                    self.transactions.append(record)

    def _count(
        self,
        _connection: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        record: Transaction | None = getattr(self._current, "record", None)
        if record is None or statement.startswith("BEGIN"):
            return
        record.statements += 1
        if self.keep_sql:
            record.sql.append(" ".join(statement.split())[:120])
        if statement.lstrip().upper().startswith(_WRITES):
            record.writes += 1
            batches = parameters if executemany else [parameters]
            record.bytes_written += sum(_size(batch) for batch in batches)


def _size(parameters: Any) -> int:
    if parameters is None:
        return 0
    values: Sequence[Any] = (
        list(parameters.values()) if isinstance(parameters, dict) else parameters
    )
    total = 0
    for value in values:
        if value is None:
            continue
        if isinstance(value, str):
            total += len(value.encode())
        elif isinstance(value, bytes | bytearray | memoryview):
            total += len(value)
        else:
            total += 8
    return total


def _opener() -> tuple[str, str | None]:
    """The store function (and its step) that opened the transaction being started."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("store.") and module != "store._engine":
            found = frame.f_locals
            step_id = found.get("step_id")
            if not isinstance(step_id, str):
                step = found.get("step")
                step_id = getattr(step, "id", None)
            return frame.f_code.co_name, step_id
        frame = frame.f_back  # type: ignore[assignment]
    return "other", None
