"""An external system the test actors call: a SQLite ledger outside the store.

A step records every call it makes (to show that retries happened) and its side effect
keyed by ``ctx.idempotency_key`` (PRIMARY KEY, ON CONFLICT DO NOTHING), as a real
integration passes an idempotency key to an API. The file's path travels in the event.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL
);
"""


def _connect(path: str | Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    connection.execute("PRAGMA busy_timeout=60000")
    return connection


def create(path: str | Path) -> str:
    """Create the ledger at ``path`` (WAL, so many worker threads can write); return the path."""
    with _connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
    return str(path)


def record_call(path: str, key: str, label: str, attempt: int) -> None:
    connection = _connect(path)
    try:
        connection.execute(
            "INSERT INTO calls (key, label, attempt, pid) VALUES (?, ?, ?, ?)",
            (key, label, attempt, os.getpid()),
        )
    finally:
        connection.close()


def record_effect(path: str, key: str, label: str) -> bool:
    """Apply the side effect once per key; True if this call applied it."""
    connection = _connect(path)
    try:
        cursor = connection.execute(
            "INSERT INTO effects (key, label) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, label),
        )
        return cursor.rowcount == 1
    finally:
        connection.close()


def effects(path: str | Path) -> dict[str, str]:
    """Every applied effect: idempotency key -> label."""
    connection = _connect(path)
    try:
        return dict(connection.execute("SELECT key, label FROM effects").fetchall())
    finally:
        connection.close()


def calls_per_label(path: str | Path) -> Counter[str]:
    connection = _connect(path)
    try:
        return Counter(label for (label,) in connection.execute("SELECT label FROM calls"))
    finally:
        connection.close()


def calls(path: str | Path) -> list[tuple[str, str, int, int]]:
    """Every call in order: (key, label, attempt, pid)."""
    connection = _connect(path)
    try:
        return connection.execute(
            "SELECT key, label, attempt, pid FROM calls ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
