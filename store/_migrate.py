"""Alembic, driven from code: the schema is created by migrations, never lazily by workers."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    # Alembic's config is interpolated: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    from store._engine import Store

    # Creates the SQLite file's folder; Alembic would fail on a missing one. And its first
    # connection puts the file in WAL mode, once, here: switching needs a lock that SQLite
    # refuses at once, without waiting, while another process writes, so a worker or gateway
    # opening a new file beside another would fail instead of waiting its turn.
    store = Store(url)
    try:
        if store.dialect == "sqlite":
            store.ping()
    finally:
        store.dispose()
    command.upgrade(alembic_config(url), revision)
