"""`baton label | export | stats`: runs as data. Outcomes operators record, training sets and
cassettes written from what runs recorded, and per-agent figures."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from baton import _render
from baton._exports import cassette_of, training_example, write_atomically
from baton._redaction import RedactionError, Redactor, chain, load_redactor, mask_secrets
from baton.cli import (
    EXIT_USAGE,
    JsonOption,
    clean_errors,
    err,
    fail,
    out,
    parse_since,
    stack,
)
from store import (
    ExportFilter,
    Store,
    agent_stats,
    label_run,
    loops_for_export,
    resolve_run_id,
)

data_app: typer.Typer = typer.Typer(help="Runs as data.")

_RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "canceled")


class Outcome(StrEnum):
    good = "good"
    bad = "bad"


class ExportFormat(StrEnum):
    openai_chat = "openai-chat"
    cassette = "cassette"


@data_app.command()
def label(
    run_id: Annotated[str, typer.Argument(help="Run id, or its unique start or end.")],
    outcome: Annotated[Outcome, typer.Argument(help="good or bad")],
    note: Annotated[str | None, typer.Option(help="Why, kept with the label.")] = None,
) -> None:
    """Record a run's outcome (labelling it again replaces the label)."""
    parts = stack()
    with clean_errors():
        full_id = resolve_run_id(parts.store, run_id)
        label_run(parts.store, full_id, outcome.value, note)
    out.print(f"run {full_id} labelled {outcome.value}")


@data_app.command()
def export(
    export_format: Annotated[
        ExportFormat,
        typer.Option("--format", help="openai-chat (JSONL for fine-tuning) or cassette."),
    ],
    run_id: Annotated[
        str | None, typer.Argument(help="One run (id, or its start or end); cassette needs one.")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's conversations.")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    label: Annotated[Outcome | None, typer.Option(help="Only runs labelled good or bad.")] = None,
    since: Annotated[str | None, typer.Option(help="Only runs started since, e.g. 7d.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    redact: Annotated[
        str | None,
        typer.Option(help="MODULE:FUNCTION taking and returning a message dict."),
    ] = None,
    mask: Annotated[
        bool,
        typer.Option(
            "--mask-secrets/--no-mask-secrets",
            help="Mask e-mail addresses and API tokens (sk-..., ghp_...) first.",
        ),
    ] = True,
) -> None:
    """Write runs out: fine-tuning JSONL, or one run as an offline-model cassette.

    openai-chat: one line per agent loop in OpenAI's chat fine-tuning format, with the tools'
    schemas; messages are redacted. cassette: the run's model exchanges in order, so the
    offline model can replay the run as a regression test."""
    if status is not None and status not in _RUN_STATUSES:
        statuses = ", ".join(_RUN_STATUSES)
        fail(f"--status {status!r} is not a run status; use one of {statuses}", EXIT_USAGE)
    if export_format is ExportFormat.cassette:
        if run_id is None:
            fail(
                "--format cassette records one run: `baton export --format cassette RUN`",
                EXIT_USAGE,
            )
        if agent or status or label or since or redact:
            fail(
                "--format cassette takes only RUN and --output: a cassette replays as recorded",
                EXIT_USAGE,
            )
    redactor = _redactor(redact, mask)
    parts = stack()
    with clean_errors():
        full_id = None if run_id is None else resolve_run_id(parts.store, run_id)
        if export_format is ExportFormat.cassette:
            assert full_id is not None
            _write_cassette(parts.store, full_id, output)
            return
        where = ExportFilter(
            run_id=full_id,
            agent=agent,
            status=status,
            label=None if label is None else label.value,
            since=parse_since(since),
        )
        counts = {"lines": 0, "skipped": 0}
        lines = _jsonl(parts.store, where, redactor, counts)
        if output is None:
            for line in lines:
                print(line)
        else:
            write_atomically(output, lines)
    summary = f"exported {counts['lines']} conversation(s) to {output or 'stdout'}"
    if counts["skipped"]:
        summary += f"; left out {counts['skipped']} loop(s) the model never answered in"
    err.print(summary)


def _redactor(spec: str | None, mask: bool) -> Redactor:
    steps: list[Redactor] = [mask_secrets] if mask else []
    if spec is not None:
        try:
            steps.append(load_redactor(spec))
        except RedactionError as error:
            fail(str(error), EXIT_USAGE)
    return chain(*steps)


def _jsonl(
    store: Store, where: ExportFilter, redactor: Redactor, counts: dict[str, int]
) -> Iterator[str]:
    for record in loops_for_export(store, where):
        example = training_example(record, redactor)
        if example is None:
            counts["skipped"] += 1
            continue
        counts["lines"] += 1
        yield json.dumps(example, ensure_ascii=False, separators=(",", ":"))


def _write_cassette(store: Store, run_id: str, output: Path | None) -> None:
    cassette = cassette_of(store, run_id)
    if output is None:
        sys.stdout.write(cassette.model_dump_json(indent=2) + "\n")
    else:
        cassette.save(output)
    err.print(
        f"recorded {len(cassette.exchanges)} model exchange(s) of run {run_id} to "
        f"{output or 'stdout'}"
    )


@data_app.command()
def stats(
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    since: Annotated[str, typer.Option(help="Runs started since, e.g. 24h, 7d, 30d.")] = "7d",
    as_json: JsonOption = False,
) -> None:
    """Per agent: runs, success rate, tokens, cost, and cost per good outcome (label good)."""
    parts = stack()
    with clean_errors():
        figures = agent_stats(parts.store, agent=agent, since=parse_since(since))
    if as_json:
        print(_render.to_json(figures))
    else:
        out.print(_stats_table(figures, since))


def _stats_table(figures: list[dict[str, Any]], since: str) -> Table:
    table = Table(title=f"agents, runs started in the last {since}", title_justify="left")
    table.add_column("agent", no_wrap=True)
    for column in ("runs", "succeeded", "tokens in / out", "cost", "good / bad", "per good"):
        table.add_column(column, justify="right")
    for row in figures:
        rate = "" if row["success_rate"] is None else f" ({row['success_rate']:.0%})"
        per_good = row["cost_per_good_usd"]
        table.add_row(
            row["agent"] or "(no agent)",
            str(row["runs"]),
            f"{row['succeeded']}{rate}",
            f"{row['input_tokens']:,} / {row['output_tokens']:,}",
            f"${row['cost_usd']:.4f}",
            f"{row['good']} / {row['bad']}",
            "-" if per_good is None else f"${per_good:.4f}",
        )
    return table
