"""What operators do to runs: replay (in place, as a fork, recorded, in bulk), cancel (one run
or many). Bulk selection is in `_bulk`, what operators read (diff, operations) in `_ops_views`.

Every change is recorded as an operation: who (the OS user), when, what, why, and how it went.
Bulk commands never act on a guess: `--dry-run` shows the count and a sample, `-y` acts.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Any

import typer

from baton import _bulk, _render
from baton._ops_views import describe_divergence
from baton._stack import Stack
from baton.cli import (
    EXIT_FAILED,
    EXIT_USAGE,
    clean_errors,
    err,
    fail,
    out,
    parse_json_object,
    parse_since,
    stack,
)
from events import EventError, event_class, parse_event
from store import (
    BULK_CANCEL,
    BULK_REPLAY,
    Operator,
    RunSelection,
    add_to_outcome,
    cancel_run,
    divergence,
    fork_run,
    replay_failed_steps,
    resolve_run_id,
    resolve_step_id,
    run_status,
    step_input,
)


def operator_name() -> str:
    """The OS user running the command, as the password database knows it."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return getpass.getuser()


def require_reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        fail("--reason must say why, e.g. --reason 'fixed the API key'", EXIT_USAGE)
    return reason


def print_json(value: Any) -> None:
    print(_render.to_json(value))


@dataclass(frozen=True)
class SelectionOptions:
    """The bulk options of `replay` and `cancel`, as given on the command line."""

    status: str | None
    agent: str | None
    actor: str | None
    error: str | None
    since: str | None
    limit: int | None
    dry_run: bool
    yes: bool

    def given(self) -> list[str]:
        """The options given, by their command-line names."""
        return [
            "--yes" if name == "yes" else f"--{name.replace('_', '-')}"
            for name, value in self.__dict__.items()
            if value
        ]

    def selection(self, allowed: tuple[str, ...], verb: str) -> RunSelection:
        if self.status is None or self.status not in allowed:
            given = "no --status" if self.status is None else f"--status {self.status!r}"
            fail(
                f"{given}: to {verb} runs in bulk select them with --status "
                f"{' or '.join(allowed)}, or name one run",
                EXIT_USAGE,
            )
        return RunSelection(
            status=self.status,
            agent=self.agent,
            actor=self.actor,
            error_type=self.error,
            since=parse_since(self.since),
            limit=self.limit,
        )


def replay_command(
    *,
    run_id: str | None,
    reason: str | None,
    step: str | None,
    from_step: str | None,
    edit: str | None,
    edit_output: str | None,
    recorded: bool,
    selection: SelectionOptions,
    wait: bool | None,
    timeout: float,
    as_json: bool,
) -> None:
    """`baton replay`: in place, a fork, or in bulk, as the options say; usage errors first."""
    fork = [
        name
        for name, value in (
            ("--edit", edit),
            ("--edit-output", edit_output),
            ("--recorded", recorded),
        )
        if value
    ]
    if run_id is None:
        if step or from_step or fork:
            fail("--step, --from and the fork options apply to one run: name it", EXIT_USAGE)
        _in_bulk(BULK_REPLAY, selection, reason, wait=bool(wait), timeout=timeout, as_json=as_json)
        return
    if selection.given():
        fail(
            f"{', '.join(selection.given())} select runs in bulk: name a run or use --status, "
            "not both",
            EXIT_USAGE,
        )
    if step and from_step:
        fail("--step replays in place, --from forks a new run: choose one", EXIT_USAGE)
    if fork and not from_step:
        fail(f"{', '.join(fork)} apply to a fork: add --from STEP", EXIT_USAGE)
    reason = require_reason(reason)
    parts = stack()
    if from_step is not None:
        replay_fork(
            parts,
            run_id,
            from_step=from_step,
            edit_text=edit,
            edit_output_text=edit_output,
            recorded=recorded,
            reason=reason,
            wait=recorded if wait is None else wait,
            timeout=timeout,
            as_json=as_json,
        )
    else:
        replay_in_place(
            parts,
            run_id,
            step=step,
            reason=reason,
            wait=bool(wait),
            timeout=timeout,
            as_json=as_json,
        )


def cancel_command(
    *, run_id: str | None, reason: str | None, selection: SelectionOptions, as_json: bool
) -> None:
    """`baton cancel`: one run, or the runs the bulk options select."""
    if run_id is None:
        _in_bulk(BULK_CANCEL, selection, reason, wait=False, timeout=0.0, as_json=as_json)
        return
    if selection.given():
        fail(
            f"{', '.join(selection.given())} select runs in bulk: name a run or use --status, "
            "not both",
            EXIT_USAGE,
        )
    cancel_one(stack(), run_id, reason=require_reason(reason), as_json=as_json)


def _in_bulk(
    kind: str,
    options: SelectionOptions,
    reason: str | None,
    *,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    allowed = ("failed",) if kind == BULK_REPLAY else ("running", "waiting")
    selection = options.selection(allowed, "replay" if kind == BULK_REPLAY else "cancel")
    if options.dry_run:
        _bulk.dry_run(stack(), kind, selection, as_json=as_json)
        return
    _bulk.act(
        stack(),
        kind,
        selection,
        actor=operator_name(),
        reason=require_reason(reason),
        yes=options.yes,
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


# -- replay ----------------------------------------------------------------------------------


def replay_in_place(
    parts: Stack,
    run_id: str,
    *,
    step: str | None,
    reason: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    from baton.cli import _print_run, _wait_for

    with clean_errors():
        parts.check_reachable()
        full_id = resolve_run_id(parts.store, run_id)
        step_id = resolve_step_id(parts.store, full_id, step) if step else None
        operator = Operator(actor=operator_name())
        publish = replay_failed_steps(
            parts.store, full_id, step_id=step_id, reason=reason, operator=operator
        )
        parts.runtime.publish(publish, confirm_now=True)
        err.print(
            f"replaying {len(publish)} step(s) of run {full_id} "
            f"(operation {operator.operation_id})",
            highlight=False,
        )
        if wait:
            _wait_for(parts, full_id, timeout)
        _print_run(parts, full_id, as_json, brief=not wait)
        status = run_status(parts.store, full_id)
    if wait and status != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def replay_fork(
    parts: Stack,
    run_id: str,
    *,
    from_step: str,
    edit_text: str | None,
    edit_output_text: str | None,
    recorded: bool,
    reason: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    from baton.cli import _wait_for

    edit = parse_json_object(edit_text, "--edit") if edit_text is not None else None
    edit_output = (
        parse_json_object(edit_output_text, "--edit-output")
        if edit_output_text is not None
        else None
    )
    with clean_errors():
        parts.check_reachable()
        full_id = resolve_run_id(parts.store, run_id)
        step_id = resolve_step_id(parts.store, full_id, from_step)
        if edit:
            _check_edit(parts, step_id, edit)
        operator = Operator(actor=operator_name())
        forked = fork_run(
            parts.store,
            full_id,
            step_id,
            reason=reason,
            operator=operator,
            edit=edit,
            edit_output=edit_output,
            recorded=recorded,
        )
        parts.runtime.publish(forked.publish, confirm_now=True)
        err.print(
            f"run {forked.run_id} forked from run {full_id} at step {step_id}: "
            f"{forked.kept_steps} step(s) kept, {len(forked.publish)} to run"
            f"{' (recorded)' if recorded else ''} (operation {operator.operation_id})",
            highlight=False,
        )
        result: dict[str, Any] = {
            "operation_id": operator.operation_id,
            "run_id": forked.run_id,
            "parent_run_id": full_id,
            "from_step_id": step_id,
            "step_id": forked.step_id,
            "kept_steps": forked.kept_steps,
            "recorded": recorded,
        }
        if wait:
            _wait_for(parts, forked.run_id, timeout)
            result["divergence"] = divergence(parts.store, forked.run_id)
        result["status"] = run_status(parts.store, forked.run_id)
        if wait:
            add_to_outcome(
                parts.store,
                operator.operation_id,
                status=result["status"],
                divergence=result["divergence"],
            )
    if as_json:
        print_json(result)
    else:
        out.print(f"run {forked.run_id} {result['status']}", highlight=False)
        if wait:
            out.print(describe_divergence(result["divergence"], full_id), highlight=False)
    if wait and result["status"] != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def _check_edit(parts: Stack, step_id: str, edit: dict[str, Any]) -> None:
    """Validate the edited input against its event class when this process knows it."""
    _actor, event_type, data = step_input(parts.store, step_id)
    parts.load_modules([], event_type=event_type)
    try:
        event_class(event_type)
    except EventError:
        err.print(
            f"[yellow]note:[/yellow] event type {event_type!r} is not known here; the edited "
            "input is checked when the fork's worker runs the step"
        )
        return
    parse_event(event_type, {**data, **edit})


# -- cancel ----------------------------------------------------------------------------------


def cancel_one(parts: Stack, run_id: str, *, reason: str, as_json: bool) -> None:
    with clean_errors():
        full_id = resolve_run_id(parts.store, run_id)
        operator = Operator(actor=operator_name())
        status = cancel_run(parts.store, full_id, reason, operator=operator)
    if as_json:
        print_json({"operation_id": operator.operation_id, "run_id": full_id, "status": status})
    else:
        out.print(f"run {full_id} canceled", highlight=False)
        err.print(f"operation {operator.operation_id}", highlight=False)
