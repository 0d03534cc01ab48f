"""Full-text search over documents and agent memory: FTS5 on SQLite, tsvector on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # External-content FTS5 indexes kept in step by triggers: one write path for callers.
        op.execute(
            "CREATE VIRTUAL TABLE documents_fts USING fts5("
            "title, content, content='documents', content_rowid='id')"
        )
        op.execute(
            "CREATE VIRTUAL TABLE agent_memory_fts USING fts5("
            "key, value, content='agent_memory', content_rowid='rowid')"
        )
        for table, columns in (
            ("documents", ("title", "content")),
            ("agent_memory", ("key", "value")),
        ):
            rowid = "id" if table == "documents" else "rowid"
            cols = ", ".join(columns)
            new = ", ".join(f"new.{c}" for c in columns)
            old = ", ".join(f"old.{c}" for c in columns)
            op.execute(
                f"CREATE TRIGGER {table}_fts_insert AFTER INSERT ON {table} BEGIN "
                f"INSERT INTO {table}_fts(rowid, {cols}) VALUES (new.{rowid}, {new}); END"
            )
            op.execute(
                f"CREATE TRIGGER {table}_fts_delete AFTER DELETE ON {table} BEGIN "
                f"INSERT INTO {table}_fts({table}_fts, rowid, {cols}) "
                f"VALUES ('delete', old.{rowid}, {old}); END"
            )
            op.execute(
                f"CREATE TRIGGER {table}_fts_update AFTER UPDATE ON {table} BEGIN "
                f"INSERT INTO {table}_fts({table}_fts, rowid, {cols}) "
                f"VALUES ('delete', old.{rowid}, {old}); "
                f"INSERT INTO {table}_fts(rowid, {cols}) VALUES (new.{rowid}, {new}); END"
            )
    else:
        op.execute(
            "CREATE INDEX ix_documents_search ON documents USING gin "
            "(to_tsvector('english', title || ' ' || content))"
        )
        op.execute(
            "CREATE INDEX ix_agent_memory_search ON agent_memory USING gin "
            "(to_tsvector('english', key || ' ' || value))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in ("documents", "agent_memory"):
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_fts_{event}")
            op.execute(f"DROP TABLE IF EXISTS {table}_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_documents_search")
        op.execute("DROP INDEX IF EXISTS ix_agent_memory_search")
