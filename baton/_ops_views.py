"""What operators read: two runs side by side (`baton runs diff`), where a fork parted from
its parent, and the operations recorded (`baton operations list | show`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from baton import _render
from baton._stack import Stack
from baton.cli import JsonOption, clean_errors, out, stack
from store import (
    OPERATION_FAILED,
    OPERATION_INTERRUPTED,
    OPERATION_PARTIAL,
    OPERATION_SUCCEEDED,
    RunDiff,
    diff_runs,
    divergence,
    list_operations,
    operation_detail,
    resolve_run_id,
)


def describe_divergence(found: dict[str, Any] | None, parent_run_id: str) -> str:
    if found is None:
        return f"no divergence: the fork matched run {parent_run_id} step for step"
    where = found["fork_step_id"] or found["original_step_id"]
    return (
        f"diverged at step {where} ({found['actor']} on {found['event_type']}): {found['detail']}"
    )


_CHANGED = "bold yellow"


def show_diff(parts: Stack, run_a: str, run_b: str, *, changed_only: bool, as_json: bool) -> None:
    with clean_errors():
        diff = diff_runs(
            parts.store, resolve_run_id(parts.store, run_a), resolve_run_id(parts.store, run_b)
        )
        # B forked from A: say where it first parted from it, as the fork's replay did.
        forked = diff.b["parent_run_id"] == diff.a["id"]
        found = divergence(parts.store, diff.b["id"]) if forked else None
    if as_json:
        _print_json({**diff.as_json(), **({"divergence": found} if forked else {})})
        return
    out.print(_diff_header(diff))
    out.print(_diff_table(diff, changed_only))
    if forked:
        out.print(describe_divergence(found, diff.a["id"]), highlight=False)


def _diff_header(diff: RunDiff) -> Table:
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column()
    changed = sum(1 for row in diff.rows if row["differences"])
    for label, run in (("A", diff.a), ("B", diff.b)):
        took = "-" if run["duration_ms"] is None else f"{run['duration_ms'] / 1000:.2f} s"
        grid.add_row(
            Text(label, style="bold"),
            Text(run["id"]),
            Text(
                f"{run['status']}  {run['steps']} steps  {run['model_calls']} model calls  "
                f"{run['input_tokens']}+{run['output_tokens']} tokens  "
                f"${run['cost_usd']:.4f}  {took}"
            ),
        )
    grid.add_row("", "", Text(f"{changed} of {len(diff.rows)} step(s) differ", style=_CHANGED))
    return grid


def _diff_table(diff: RunDiff, changed_only: bool) -> Table:
    table = Table(title_justify="left")
    for column in ("#", "step", "A", "B", "input", "output / choice", "tokens", "cost", "ms"):
        table.add_column(column, overflow="fold", max_width=48)
    for number, row in enumerate(diff.rows, 1):
        differences = set(row["differences"])
        if changed_only and not differences:
            continue
        a, b = row["a"], row["b"]
        step = Text(f"{row['actor']}\n{row['event_type']}", style="" if differences else "dim")
        if a is None or b is None:
            only = "A" if b is None else "B"
            table.add_row(
                str(number),
                step,
                _state(a),
                _state(b),
                Text(f"only in {only}", style="bold red"),
                "",
                "",
                "",
                "",
            )
            continue
        changed = row["changed"]
        table.add_row(
            str(number),
            step,
            _state(a, "state" in differences),
            _state(b, "state" in differences),
            _changes(a["input"], b["input"], changed.get("input", []), _short(a["input"])),
            _outcome_cell(a, b, differences, changed.get("output", [])),
            _pair(_tokens(a), _tokens(b), "tokens" in differences),
            _pair(f"${a['cost_usd']:.4f}", f"${b['cost_usd']:.4f}", "cost" in differences),
            _pair(_ms(a["latency_ms"]), _ms(b["latency_ms"]), "latency" in differences),
        )
    return table


def _state(view: dict[str, Any] | None, changed: bool = False) -> Text:
    if view is None:
        return Text("-", style="dim")
    text = _render.status_text(view["state"])
    if changed:
        text.stylize("reverse")
    return text


def _pair(a: str, b: str, changed: bool) -> Text:
    """One value when both runs agree; A → B, highlighted, when they do not."""
    if not changed:
        return Text(a, style="dim")
    return Text.assemble((a, "red"), " → ", (b, _CHANGED))


def _changes(
    a: Any, b: Any, paths: list[str], same: str, labels: dict[str, str] | None = None
) -> Text:
    """The fields that differ, each as `field: A → B`; the value, dimmed, when none does."""
    if not paths:
        return Text(same, style="dim")
    if "*" in paths:
        return Text.assemble((_short(a, 28), "red"), " → ", (_short(b, 28), _CHANGED))
    text = Text()
    for path in paths[:3]:
        if text:
            text.append("\n")
        text.append(f"{(labels or {}).get(path, path)}: ")
        text.append(_short(_dig(a, path), 24), "red")
        text.append(" → ")
        text.append(_short(_dig(b, path), 24), _CHANGED)
    if len(paths) > 3:
        text.append(f"\n(+{len(paths) - 3} more)")
    return text


def _outcome_cell(
    a: dict[str, Any], b: dict[str, Any], differences: set[str], output_paths: list[str]
) -> Text:
    if differences & {"choice", "result"} or not output_paths:
        changed = bool(differences & {"choice", "result", "output"})
        return _pair(_outcome(a), _outcome(b), changed)
    # "0.total" is the field total of the step's first event: name it by the event's type.
    paths, labels = [], {}
    for path in output_paths:
        index, _, field = path.partition(".")
        event = _dig(a["output"], index) or _dig(b["output"], index) or {}
        full = f"{index}.data.{field}" if field else index
        paths.append(full)
        labels[full] = f"{event.get('type', index)} {field}".strip()
    return _changes(a["output"], b["output"], paths, "", labels)


def _dig(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def _outcome(view: dict[str, Any]) -> str:
    if view["choice"] is not None and view["choice"] != "answer":
        return _short(view["choice"])
    if view["result"] is not None:
        return _short(view["result"])
    return _short([event["type"] for event in view["output"]]) if view["output"] else "-"


def _tokens(view: dict[str, Any]) -> str:
    if not view["input_tokens"] and not view["output_tokens"]:
        return "-"
    return f"{view['input_tokens']}+{view['output_tokens']}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else _render.to_json(value).replace("\n", "")
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- operations ------------------------------------------------------------------------------

operations_app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="What operators did: replays, forks, cancels, who and why."
)


@operations_app.command("list")
def operations_list(
    kind: Annotated[str | None, typer.Option(help="replay, fork, cancel, bulk_replay, ...")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """Operations, newest first."""
    parts = stack()
    with clean_errors():
        found = list_operations(parts.store, kind=kind, limit=limit)
    if as_json:
        _print_json(found)
        return
    table = Table(title=f"{len(found)} operation(s)", title_justify="left")
    for column in ("operation", "kind", "by", "when", "status", "reason", "what"):
        table.add_column(column, overflow="fold", max_width=50)
    for row in found:
        table.add_row(
            row["id"],
            row["kind"],
            row["actor"],
            _render.when(row["created_at"]),
            _operation_status(row["status"]),
            row["reason"],
            _short(row["parameters"], 50),
        )
    out.print(table)


@operations_app.command("show")
def operations_show(
    operation_id: Annotated[str, typer.Argument(help="The operation's id.")],
    as_json: JsonOption = False,
) -> None:
    """One operation: who, when, what, why, and every run's outcome."""
    parts = stack()
    with clean_errors():
        found = operation_detail(parts.store, operation_id)
    if as_json:
        _print_json(found)
        return
    out.print(
        f"operation {found['id']} ({found['kind']}) by {found['actor']} at "
        f"{_render.when(found['created_at'])}: {found['status']}",
        highlight=False,
    )
    out.print(f"reason: {found['reason']}", highlight=False)
    out.print(f"parameters: {_render.to_json(found['parameters'])}", highlight=False)
    out.print(f"outcome: {_render.to_json(found['outcome'])}", highlight=False)


def _operation_status(status: str) -> Text:
    style = {
        OPERATION_SUCCEEDED: "green",
        OPERATION_PARTIAL: "yellow",
        OPERATION_FAILED: "red",
        OPERATION_INTERRUPTED: "magenta",
    }.get(status, "cyan")
    return Text(status, style=style)


def _print_json(value: Any) -> None:
    print(_render.to_json(value))
