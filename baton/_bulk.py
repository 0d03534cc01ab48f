"""Replay or cancel many runs at once: select them, show a dry run, act with -y, and keep
every run's outcome with one operation; a progress bar on stderr while it works."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from baton import _render
from baton._stack import Stack
from baton.cli import EXIT_FAILED, EXIT_USAGE, clean_errors, err, fail, out
from store import (
    BULK_CANCEL,
    BULK_REPLAY,
    OPERATION_FAILED,
    OPERATION_INTERRUPTED,
    OPERATION_PARTIAL,
    OPERATION_SUCCEEDED,
    RUN_FINISHED,
    InvalidState,
    NotFound,
    Operator,
    RunSelection,
    cancel_run,
    close_operation,
    count_runs,
    describe_runs,
    open_operation,
    replay_failed_steps,
    select_runs,
    statuses_of,
)

SAMPLE_SIZE = 10
_VERB = {BULK_REPLAY: "replay", BULK_CANCEL: "cancel"}


def dry_run(parts: Stack, kind: str, selection: RunSelection, *, as_json: bool) -> None:
    """Count the selected runs and show a sample; change nothing."""
    with clean_errors():
        count = count_runs(parts.store, selection)
        sample = describe_runs(
            parts.store, select_runs(parts.store, replace(selection, limit=SAMPLE_SIZE))
        )
    if as_json:
        _print_json({"dry_run": True, "count": count, "sample": sample})
        return
    out.print(f"{count} run(s) would be {_VERB[kind]}ed (--dry-run: nothing changed)")
    if sample:
        out.print(_sample_table(sample, count))


def act(
    parts: Stack,
    kind: str,
    selection: RunSelection,
    *,
    actor: str,
    reason: str,
    yes: bool,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Replay or cancel the selected runs (with -y), one operation for all of them; every
    run's outcome is kept with the operation, even when the operator stops it part-way."""
    verb = _VERB[kind]
    with clean_errors():
        count = count_runs(parts.store, selection)
    if not yes:
        fail(
            f"this would {verb} {count} run(s); add -y to {verb} them, or --dry-run to see "
            "them first",
            EXIT_USAGE,
        )
    if count == 0:
        if as_json:
            _print_json({"operation_id": None, "count": 0, "runs": []})
        else:
            out.print(f"no run to {verb}: nothing matches")
        return
    change = _replay_one if kind == BULK_REPLAY else _cancel_one
    with clean_errors():
        if kind == BULK_REPLAY:
            parts.check_reachable()
        run_ids = select_runs(parts.store, selection)
        operator = open_operation(
            parts.store, kind=kind, actor=actor, reason=reason, parameters=selection.parameters()
        )
        results: list[dict[str, Any]] = []
        status = OPERATION_INTERRUPTED
        try:
            with _progress(as_json) as progress:
                task = progress.add_task(f"{verb}ing", total=len(run_ids))
                for run_id in run_ids:
                    results.append(change(parts, run_id, reason, operator))
                    progress.advance(task)
            changed = sum(1 for r in results if r["outcome"] != "skipped")
            status = (
                OPERATION_SUCCEEDED
                if changed == len(results)
                else OPERATION_PARTIAL
                if changed
                else OPERATION_FAILED
            )
            if wait and kind == BULK_REPLAY:
                _wait_for_all(parts, results, timeout)
        finally:
            outcome = _bulk_outcome(results, count=len(run_ids))
            close_operation(parts.store, operator.operation_id, status=status, outcome=outcome)
    if as_json:
        _print_json({"operation_id": operator.operation_id, "status": status, **outcome})
    else:
        out.print(
            f"{outcome['changed']} of {len(run_ids)} run(s) {verb}ed (operation "
            f"{operator.operation_id}, {status})",
            highlight=False,
        )
        for result in results:
            if result["outcome"] == "skipped":
                out.print(f"  skipped {result['run_id']}: {result['error']}", highlight=False)
        if "final" in outcome:
            finals = ", ".join(f"{n} {s}" for s, n in sorted(outcome["final"].items()))
            out.print(f"after the replay: {finals}")
    if status != OPERATION_SUCCEEDED:
        raise typer.Exit(EXIT_FAILED)


def _replay_one(parts: Stack, run_id: str, reason: str, operator: Operator) -> dict[str, Any]:
    try:
        publish = replay_failed_steps(parts.store, run_id, reason=reason, operator=operator)
    except (InvalidState, NotFound) as error:
        return {"run_id": run_id, "outcome": "skipped", "error": str(error)}
    parts.runtime.publish(publish, confirm_now=True)
    return {"run_id": run_id, "outcome": "replayed", "steps": len(publish)}


def _cancel_one(parts: Stack, run_id: str, reason: str, operator: Operator) -> dict[str, Any]:
    try:
        cancel_run(parts.store, run_id, reason, operator=operator)
    except (InvalidState, NotFound) as error:
        return {"run_id": run_id, "outcome": "skipped", "error": str(error)}
    return {"run_id": run_id, "outcome": "canceled"}


def _wait_for_all(parts: Stack, results: list[dict[str, Any]], timeout: float) -> None:
    """Wait until every replayed run finishes; each result gets the run's final status."""
    waiting = [r["run_id"] for r in results if r["outcome"] == "replayed"]
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while waiting and time.monotonic() < deadline:
        statuses.update(statuses_of(parts.store, waiting))
        waiting = [run_id for run_id in waiting if statuses.get(run_id) not in RUN_FINISHED]
        if waiting:
            time.sleep(0.1)
    for result in results:
        if result["outcome"] == "replayed":
            result["final_status"] = statuses.get(result["run_id"], "unknown")


def _bulk_outcome(results: list[dict[str, Any]], *, count: int) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "count": count,
        "changed": sum(1 for r in results if r["outcome"] != "skipped"),
        "skipped": sum(1 for r in results if r["outcome"] == "skipped"),
        "not_reached": count - len(results),
        "runs": results,
    }
    finals = [r["final_status"] for r in results if "final_status" in r]
    if finals:
        outcome["final"] = {status: finals.count(status) for status in set(finals)}
    return outcome


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )


def _sample_table(sample: list[dict[str, Any]], count: int) -> Table:
    title = f"first {len(sample)} of {count}" if count > len(sample) else f"{count} run(s)"
    table = Table(title=title, title_justify="left")
    for column in ("run", "status", "trigger", "agent", "step", "error", "created"):
        table.add_column(column)
    for row in sample:
        table.add_row(
            row["id"],
            _render.status_text(row["status"]),
            row["trigger_type"],
            row["agent"] or "",
            row["step_actor"] or "",
            Text(row["error_type"] or "", style="red"),
            _render.when(row["created_at"]),
        )
    return table


def _print_json(value: Any) -> None:
    print(_render.to_json(value))
