"""Alembic environment: runs migrations on the URL set by store._migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import store._tables  # noqa: F401  (registers the tables on SQLModel.metadata)

configured = context.config.get_main_option("sqlalchemy.url")
assert configured is not None, "store._migrate sets sqlalchemy.url"
url: str = configured


def run() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=SQLModel.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
