"""Text search over documents and agents' long-term memory: FTS5 bm25 or PostgreSQL ts_rank."""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, text, update

from store._engine import Store
from store._tables import agent_memory, documents

_WORD = re.compile(r"\w+", re.UNICODE)


def _fts5_query(query: str) -> str | None:
    """Any text becomes a safe FTS5 query: each word quoted, any word may match."""
    words = _WORD.findall(query)
    return " OR ".join(f'"{word}"' for word in words) if words else None


def _pg_query(query: str) -> str | None:
    words = _WORD.findall(query)
    return " | ".join(words) if words else None


def search_documents(store: Store, query: str, limit: int = 5) -> list[dict[str, Any]]:
    """The documents that best match ``query``, best first, with a snippet each."""
    with store.read() as connection:
        if connection.dialect.name == "sqlite":
            match = _fts5_query(query)
            if match is None:
                return []
            rows = connection.execute(
                text(
                    "SELECT d.path, d.title, snippet(documents_fts, 1, '', '', ' … ', 24) AS "
                    "snippet, bm25(documents_fts) AS score FROM documents_fts "
                    "JOIN documents d ON d.id = documents_fts.rowid "
                    "WHERE documents_fts MATCH :match ORDER BY score LIMIT :limit"
                ),
                {"match": match, "limit": limit},
            ).all()
        else:
            match = _pg_query(query)
            if match is None:
                return []
            rows = connection.execute(
                text(
                    "SELECT path, title, ts_headline('english', content, q, 'MaxWords=24') "
                    "AS snippet, ts_rank(to_tsvector('english', title || ' ' || content), q) "
                    "AS score FROM documents, to_tsquery('english', :match) q "
                    "WHERE to_tsvector('english', title || ' ' || content) @@ q "
                    "ORDER BY score DESC LIMIT :limit"
                ),
                {"match": match, "limit": limit},
            ).all()
    return [{"path": r.path, "title": r.title, "snippet": r.snippet} for r in rows]


def add_document(store: Store, path: str, title: str, content: str) -> bool:
    """Load or replace a document by path; True when it was new."""
    with store.transaction() as connection:
        existing = connection.execute(select(documents.c.id).where(documents.c.path == path))
        if existing.first() is not None:
            connection.execute(
                update(documents)
                .where(documents.c.path == path)
                .values(title=title, content=content)
            )
            return False
        connection.execute(
            insert(documents).values(
                path=path, title=title, content=content, created_at=time.time()
            )
        )
        return True


def remember(connection: Connection, agent: str, key: str, value: str) -> None:
    """Set an agent's long-term fact (in the caller's transaction)."""
    connection.execute(
        delete(agent_memory).where(agent_memory.c.agent == agent, agent_memory.c.key == key)
    )
    connection.execute(
        insert(agent_memory).values(agent=agent, key=key, value=value, updated_at=time.time())
    )


def recall(store: Store, agent: str, query: str, limit: int = 5) -> list[dict[str, str]]:
    """An agent's facts whose key or value matches ``query``, best first."""
    with store.read() as connection:
        exact = connection.execute(
            select(agent_memory.c.key, agent_memory.c.value).where(
                agent_memory.c.agent == agent, agent_memory.c.key == query
            )
        ).all()
        if connection.dialect.name == "sqlite":
            match = _fts5_query(query)
            rows = (
                []
                if match is None
                else connection.execute(
                    text(
                        "SELECT m.key, m.value FROM agent_memory_fts "
                        "JOIN agent_memory m ON m.rowid = agent_memory_fts.rowid "
                        "WHERE agent_memory_fts MATCH :match AND m.agent = :agent "
                        "ORDER BY bm25(agent_memory_fts) LIMIT :limit"
                    ),
                    {"match": match, "agent": agent, "limit": limit},
                ).all()
            )
        else:
            match = _pg_query(query)
            rows = (
                []
                if match is None
                else connection.execute(
                    text(
                        "SELECT key, value FROM agent_memory, to_tsquery('english', :match) q "
                        "WHERE agent = :agent AND to_tsvector('english', key || ' ' || value) @@ q "
                        "ORDER BY ts_rank(to_tsvector('english', key || ' ' || value), q) DESC "
                        "LIMIT :limit"
                    ).bindparams(bindparam("limit")),
                    {"match": match, "agent": agent, "limit": limit},
                ).all()
            )
    seen: dict[str, str] = {}
    for row in [*exact, *rows]:
        seen.setdefault(row.key, row.value)
    return [{"key": k, "value": v} for k, v in seen.items()]
