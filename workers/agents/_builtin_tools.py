"""Tools every agent may list: long-term memory (remember, recall) and document search."""

from __future__ import annotations

from store._search import recall as recall_facts
from store._search import remember as remember_fact
from store._search import search_documents as search
from workers._context import Context
from workers.agents._tool import tool


def _agent_of(ctx: Context) -> str:
    return ctx.agent_name or "default"


@tool(idempotent=True)
def remember(key: str, value: str, ctx: Context) -> str:
    """Remember a fact for later runs, under a short key (replaces what the key held)."""
    agent = _agent_of(ctx)
    ctx.defer_write(lambda connection: remember_fact(connection, agent, key, value))
    return f"remembered {key!r}"


@tool(idempotent=True)
def recall(query: str, ctx: Context) -> list[dict[str, str]]:
    """Recall facts remembered in earlier runs whose key or text matches the query."""
    return recall_facts(ctx._runtime.store, _agent_of(ctx), query)


@tool(idempotent=True)
def search_documents(query: str, ctx: Context) -> list[dict[str, str]]:
    """Search the loaded documents (README, docs) for passages matching the query, best first."""
    return search(ctx._runtime.store, query)
