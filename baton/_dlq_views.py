"""How dead letters look to a person: compact tables and one item in full (rich)."""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from baton import _render
from store import DeadLetterItem, short_id


def groups_table(groups: list[dict[str, Any]]) -> Table:
    table = _compact_table(f"{len(groups)} dead-letter group(s)")
    table.add_column("group", no_wrap=True)
    table.add_column("actor", overflow="fold")
    table.add_column("error", no_wrap=True, style="red")
    table.add_column("count", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("first seen", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for group in groups:
        table.add_row(
            group["group"],
            group["actor"] or "?",
            group["error_type"],
            str(group["count"]),
            str(group["runs"]),
            _seen(group["first_seen"]),
            _seen(group["last_seen"]),
        )
    return table


def plan_table(items: list[DeadLetterItem], why_not: dict[str, str | None], verb: str) -> Table:
    table = _compact_table(f"{len(items)} item(s)")
    table.add_column("item", no_wrap=True)
    table.add_column("actor", overflow="fold")
    table.add_column("error", no_wrap=True, style="red")
    table.add_column("action", overflow="fold")
    for item in items:
        reason = why_not[item.id]
        table.add_row(
            _short(item.id),
            item.actor or "?",
            item.error_type,
            Text(f"skip: {reason}", style="yellow") if reason else Text(verb or _how(item)),
        )
    return table


def _how(item: DeadLetterItem) -> str:
    if item.kind == "step":
        return f"re-run in place with run {_short(item.run_id or '')}"
    return f"re-publish to {item.actor}"


def items_table(items: list[DeadLetterItem], title: str) -> Table:
    table = _compact_table(title)
    table.add_column("item", no_wrap=True)
    table.add_column("run", overflow="fold")
    table.add_column("seen")
    table.add_column("message", overflow="fold")
    for item in items:
        table.add_row(
            _short(item.id), _short(item.run_id or "-"), _seen(item.seen_at), item.error_message
        )
    return table


def detail_view(detail: dict[str, Any]) -> Group:
    header = Table.grid(padding=(0, 2))
    if detail["kind"] == "step":
        step = detail["step"]
        attempt = detail["last_attempt"] or {}
        header.add_row("step", Text(step["id"], style="bold"))
        header.add_row("actor", step["actor"])
        header.add_row("run", f"{step['run_id']} ({detail['run_status']})")
        header.add_row("error", Text(f"{step['error_type']}: {step['error_message']}", "red"))
        header.add_row("attempts", str(step["attempts"]))
        header.add_row("failed", _render.when(step["finished_at"]))
        body = attempt.get("traceback") or "(no traceback recorded)"
        return Group(header, Text(""), Text("last attempt's traceback", "bold"), Text(body))
    header.add_row("dead letter", Text(detail["id"], style="bold"))
    header.add_row("queue", detail["queue"])
    header.add_row("actor", detail["actor"] or "?")
    header.add_row("reason", Text(detail["reason"], style="red"))
    header.add_row("seen", _render.when(detail["created_at"]))
    pointer = detail["pointer"]
    if pointer is None:
        header.add_row("replay", Text(f"no: {detail['not_a_pointer']}", "yellow"))
    else:
        state = detail["step_state"] or "not in the store"
        header.add_row("points at", f"step {pointer['step_id']} ({state})")
    raw = Text(f"raw bytes ({detail['raw_size']:,}): ", "bold")
    return Group(header, Text(""), raw + Text(detail["raw_repr"]))


def _short(item_id: str) -> str:
    """A 32-character id as its last 12 (its first are its run's): every command here takes
    them for the id."""
    return short_id(item_id)


def _seen(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%m-%d %H:%M")


def _compact_table(title: str) -> Table:
    # No borders: ids and actor names are long, and a pipe is 80 columns wide.
    return Table(
        title=title,
        title_justify="left",
        box=None,
        padding=(0, 1),
        pad_edge=False,
        header_style="bold",
    )
