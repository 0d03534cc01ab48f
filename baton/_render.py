"""How runs look to a person: tables and the step tree (rich). Scripts use --json instead."""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

_STATUS_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "pending": "cyan",
    "waiting": "yellow",
    "collecting": "yellow",
    "failed": "red",
    "canceled": "magenta",
}
_STATUS_MARK = {
    "succeeded": "✓",
    "failed": "✗",
    "running": "▶",
    "pending": "…",
    "waiting": "⏸",
    "collecting": "⧗",
    "canceled": "⊘",
}


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = end - start
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def status_text(status: str) -> Text:
    return Text(f"{_STATUS_MARK.get(status, '?')} {status}", style=_STATUS_STYLE.get(status, ""))


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(runs)} run(s)", title_justify="left")
    table.add_column("run", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("trigger", overflow="fold")
    table.add_column("agent")
    table.add_column("created", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold", max_width=60)
    for run in runs:
        table.add_row(
            run["id"],
            status_text(run["status"]),
            run["trigger_type"],
            run["agent"] or "",
            when(run["created_at"]),
            duration(run["created_at"], run["finished_at"]),
            run["error"] or "",
        )
    return table


def run_view(detail: dict[str, Any]) -> Group:
    run = detail["run"]
    header = Table.grid(padding=(0, 2))
    header.add_row("run", Text(run["id"], style="bold"))
    header.add_row("status", status_text(run["status"]))
    header.add_row("trigger", run["trigger_type"])
    header.add_row("created", when(run["created_at"]))
    header.add_row("took", duration(run["created_at"], run["finished_at"]))
    if run["error"]:
        header.add_row("error", Text(run["error"], style="red"))
    parts: list[Any] = [header, Text(""), step_tree(detail)]
    if detail["memory"]:
        memory = Table(title="memory", title_justify="left")
        memory.add_column("key")
        memory.add_column("value", overflow="fold")
        for key, value in sorted(detail["memory"].items()):
            memory.add_row(key, json.dumps(value))
        parts += [Text(""), memory]
    open_waits = [w for w in detail["waits"] if w["state"] == "open"]
    if open_waits:
        parts.append(
            Text("waiting for: " + ", ".join(w["name"] for w in open_waits), style="yellow")
        )
    return Group(*parts)


def step_tree(detail: dict[str, Any]) -> Tree:
    """The run as cause and effect: event → the steps it caused → the events they emitted.

    A chain (one step, one event, one step ...) stays at one depth so a 1,000-step run is
    a list, not a staircase.
    """
    run = detail["run"]
    steps_by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for step in detail["steps"]:
        steps_by_event[step["event_id"]].append(step)
    events_by_step: dict[str, list[dict[str, Any]]] = defaultdict(list)
    events_by_id = {}
    for event in detail["events"]:
        events_by_id[event["id"]] = event
        if event["cause_step_id"]:
            events_by_step[event["cause_step_id"]].append(event)
    root = Tree(Text(f"run {run['id']}", style="bold"))
    trigger = events_by_id.get(run["trigger_event_id"])
    if trigger is not None:
        root.add(_event_label(trigger))
        _continue(root, trigger, steps_by_event, events_by_step)
    return root


def _continue(
    container: Tree,
    event: dict[str, Any],
    steps_by_event: dict[str, list[dict[str, Any]]],
    events_by_step: dict[str, list[dict[str, Any]]],
) -> None:
    """Add what ``event`` caused to ``container``: a chain stays in it, a fan-out branches."""
    while True:
        caused = steps_by_event.get(event["id"], [])
        if len(caused) != 1:
            for step in caused:
                _branch(container.add(_step_label(step)), step, steps_by_event, events_by_step)
            return
        step = caused[0]
        step_node = container.add(_step_label(step))
        emitted = events_by_step.get(step["id"], [])
        if len(emitted) != 1:
            _branch(step_node, step, steps_by_event, events_by_step)
            return
        event = emitted[0]
        container.add(_event_label(event))


def _branch(
    step_node: Tree,
    step: dict[str, Any],
    steps_by_event: dict[str, list[dict[str, Any]]],
    events_by_step: dict[str, list[dict[str, Any]]],
) -> None:
    for child in events_by_step.get(step["id"], []):
        branch = step_node.add(_event_label(child))
        _continue(branch, child, steps_by_event, events_by_step)


def _event_label(event: dict[str, Any]) -> Text:
    return Text.assemble(
        ("● ", "blue"), (event["type"], "bold blue"), " ", (_event_summary(event), "dim")
    )


def _event_summary(event: dict[str, Any]) -> str:
    """A line about the event: the agent loop's events say what they carry, others show data."""
    data = event["data"]
    if event["type"] == "agent.tool_call":
        summary = f"{data['name']}({data['arguments']})"
    elif event["type"] == "agent.tool_result":
        summary = f"{data['name']} → {data['content']}"
    elif event["type"] == "agent.model_call":
        summary = f"{data['agent']} at message {data['seq']}" + (
            " (repair)" if data.get("repair") else ""
        )
    elif event["type"] == "agent.finished":
        summary = f"{data['agent']}: {json.dumps(data['output'], separators=(',', ':'))}"
    else:
        summary = json.dumps(data, separators=(",", ":"))
    summary = " ".join(summary.split())
    return summary if len(summary) <= 90 else summary[:87] + "..."


def _step_label(step: dict[str, Any]) -> Text:
    label = Text.assemble(
        (f"{_STATUS_MARK.get(step['state'], '?')} ", _STATUS_STYLE.get(step["state"], "")),
        (step["actor"], "bold"),
        "  ",
        (duration(step["started_at"], step["finished_at"]), "cyan"),
    )
    if step["attempts"] > 1:
        label.append(f"  {step['attempts']} attempts", style="yellow")
    if step["error_type"] and step["state"] != "succeeded":
        label.append(f"  {step['error_type']}: {step['error_message']}", style="red")
    return label


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
