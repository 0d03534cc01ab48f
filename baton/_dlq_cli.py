"""`baton dlq list | show | replay | discard`: steps that failed for good and messages no
worker could take, grouped by actor and error type. They stay in the store until an operator
replays or discards them; Redis keeps its own dead letters for seven days only."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from baton import _render
from baton._dlq_views import detail_view, groups_table, items_table, plan_table
from baton._ops import operator_name
from baton.cli import EXIT_FAILED, EXIT_USAGE, JsonOption, clean_errors, err, fail, out, stack
from baton.cli import parse_since as _parse_since
from store import (
    DeadLetterFilter,
    DeadLetterItem,
    Store,
    dead_letter_detail,
    dead_letter_groups,
    dead_letter_items,
    discard_dead_letters,
    plan_dead_letter_replay,
    replay_dead_letters,
)

dlq_app: typer.Typer = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: steps that failed for good and messages no worker could take.",
)

ActorOption = Annotated[str | None, typer.Option(help="Only actors whose name contains this.")]
ErrorOption = Annotated[str | None, typer.Option(help="Only error types containing this.")]
SinceOption = Annotated[str | None, typer.Option(help="Only seen since, e.g. 1h, 2d.")]
TargetsArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Groups (g-...), failed step ids or dead letters (dl-N) from the list."),
]
ReasonOption = Annotated[str, typer.Option(help="Why: kept with the operation.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show what would happen only.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AllOption = Annotated[bool, typer.Option("--all", help="Everything on the list.")]


def _where(actor: str | None, error: str | None, since: str | None) -> DeadLetterFilter:
    return DeadLetterFilter(actor=actor, error=error, since=_parse_since(since))


@dlq_app.command("list")
def dlq_list(
    actor: ActorOption = None,
    error: ErrorOption = None,
    since: SinceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Groups of dead letters by actor and error type, with counts and first and last seen."""
    where = _where(actor, error, since)
    parts = stack()
    with clean_errors():
        groups = dead_letter_groups(parts.store, where)
    if as_json:
        print(_render.to_json(groups))
        return
    out.print(groups_table(groups))


@dlq_app.command("show")
def dlq_show(
    target: Annotated[str, typer.Argument(help="A group (g-...), step id or dead letter (dl-N).")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Items of a group shown.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """One dead letter in full, or a group's items and its newest one in full.

    A step shows its last attempt's traceback; a message its raw bytes (repr, truncated)."""
    parts = stack()
    with clean_errors():
        if target.startswith("g-"):
            items = dead_letter_items(parts.store, DeadLetterFilter(), [target])
            items.sort(key=lambda item: item.seen_at, reverse=True)
            shown: dict[str, Any] = {
                "group": target,
                "count": len(items),
                "items": [item.__dict__ for item in items[:limit]],
                "newest": dead_letter_detail(parts.store, items[0].id),
            }
        else:
            shown = dead_letter_detail(parts.store, target)
    if as_json:
        print(_render.to_json(shown))
    elif "items" in shown:
        out.print(items_table(items[:limit], f"group {target}: {len(items)} item(s)"))
        out.print()
        out.print(detail_view(shown["newest"]))
    else:
        out.print(detail_view(shown))


@dlq_app.command("replay")
def dlq_replay(
    reason: ReasonOption,
    targets: TargetsArgument = None,
    actor: ActorOption = None,
    error: ErrorOption = None,
    since: SinceOption = None,
    everything: AllOption = False,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Replay dead letters: failed steps re-run in place, step pointers are re-published.

    A failed step re-runs in place with the other failed steps of its run. A dead-lettered
    message whose bytes still point at a step waiting for one is re-published. Undecodable
    bytes cannot be replayed: discard them."""
    _require(reason, targets, actor, error, since, everything)
    parts = stack()
    with clean_errors():
        items = _selected(parts.store, targets, actor, error, since)
        plan = plan_dead_letter_replay(parts.store, items)
    runnable = [item_id for item_id, why_not in plan if why_not is None]
    if not as_json or dry_run:
        _print_plan(items, dict(plan), as_json)
    if dry_run:
        return
    if not runnable:
        reasons = "; ".join(f"{item_id}: {why_not}" for item_id, why_not in plan[:3])
        fail(f"nothing here can be replayed ({reasons}); discard what cannot be", EXIT_FAILED)
    _confirm(f"this would replay {len(runnable)} of {len(items)} item(s)", "replay", yes)
    with clean_errors():
        parts.check_reachable()
        outcome = replay_dead_letters(parts.store, items, reason=reason, actor=operator_name())
        parts.runtime.publish(outcome.publish, confirm_now=True)
    if as_json:
        print(
            _render.to_json(
                {
                    "operation_id": outcome.operation_id,
                    "status": outcome.status,
                    "replayed": outcome.replayed,
                    "skipped": dict(outcome.skipped),
                    "published": len(outcome.publish),
                }
            )
        )
    for item_id, why_not in outcome.skipped:
        err.print(f"[yellow]skipped[/yellow] {item_id}: {why_not}", highlight=False)
    err.print(
        f"replayed {len(outcome.replayed)} item(s): {len(outcome.publish)} step(s) handed to "
        f"the workers (operation {outcome.operation_id}, {outcome.status})",
        highlight=False,
    )
    if not outcome.replayed:
        raise typer.Exit(EXIT_FAILED)


@dlq_app.command("discard")
def dlq_discard(
    reason: ReasonOption,
    targets: TargetsArgument = None,
    actor: ActorOption = None,
    error: ErrorOption = None,
    since: SinceOption = None,
    everything: AllOption = False,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Take dead letters off the list; their rows stay in the store with the reason."""
    _require(reason, targets, actor, error, since, everything)
    parts = stack()
    with clean_errors():
        items = _selected(parts.store, targets, actor, error, since)
    if dry_run or not as_json:
        _print_plan(items, {item.id: None for item in items}, as_json, verb="discard")
    if dry_run:
        return
    _confirm(f"this would discard {len(items)} item(s)", "discard", yes)
    with clean_errors():
        discarded = discard_dead_letters(parts.store, items, reason=reason, actor=operator_name())
    if as_json:
        print(_render.to_json({"discarded": discarded, "items": [item.id for item in items]}))
    err.print(f"discarded {discarded} item(s)")


def _require(
    reason: str,
    targets: list[str] | None,
    actor: str | None,
    error: str | None,
    since: str | None,
    everything: bool,
) -> None:
    if not reason.strip():
        fail("--reason must say why, e.g. --reason 'the payment API is back'", EXIT_USAGE)
    if not (targets or actor or error or since or everything):
        fail(
            "name what to act on: groups or ids from `baton dlq list`, filters (--actor, "
            "--error, --since), or --all",
            EXIT_USAGE,
        )


def _selected(
    store: Store,
    targets: list[str] | None,
    actor: str | None,
    error: str | None,
    since: str | None,
) -> list[DeadLetterItem]:
    items = dead_letter_items(store, _where(actor, error, since), targets or [])
    if not items:
        fail("no dead letters match; see `baton dlq list`", EXIT_FAILED)
    return items


def _confirm(what: str, verb: str, yes: bool) -> None:
    # As the bulk `baton replay` and `baton cancel`: -y is the confirmation, never a prompt.
    if not yes:
        fail(f"{what}; add -y to {verb} them, or --dry-run to see them first", EXIT_USAGE)


def _print_plan(
    items: list[DeadLetterItem], why_not: dict[str, str | None], as_json: bool, verb: str = ""
) -> None:
    if as_json:
        plan = [
            {**item.__dict__, "action": "skip" if why_not[item.id] else verb or "replay"}
            | ({"why_not": why_not[item.id]} if why_not[item.id] else {})
            for item in items
        ]
        print(_render.to_json(plan))
        return
    out.print(plan_table(items, why_not, verb))
