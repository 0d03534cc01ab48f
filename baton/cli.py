"""The `baton` command. Exit codes: 0 ok, 1 failed or not found, 2 usage, 3 cannot reach Redis
or the store. Logs go to stderr; results to stdout (``--json`` where a script reads)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer
from rich.console import Console

from baton import _render
from baton._stack import Stack, Unreachable
from baton.settings import SettingsError, load_settings
from events import BatonError, EventError, parse_event
from store import (
    InvalidState,
    NotFound,
    RunFilter,
    StoreUnavailable,
    list_runs,
    resolve_run_id,
    run_detail,
    run_status,
    send_signal,
)
from workers import WORKER_THREADS, WorkerError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Durable, replayable, traceable LLM agents.",
)
runs_app = typer.Typer(no_args_is_help=True, help="Find and inspect runs.")
db_app = typer.Typer(no_args_is_help=True, help="The store's schema.")
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")

# Piped output is read in logs and CI: give tables room instead of the default 80 columns.
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def main() -> None:
    """Entry point of the `baton` console script."""
    logging.basicConfig(
        level=logging.INFO if "-v" in sys.argv else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app()


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Turn Baton's errors into one line on stderr and the exit code DESIGN.md gives them."""
    try:
        yield
    except (SettingsError, EventError, WorkerError) as error:
        fail(str(error), EXIT_USAGE)
    except (Unreachable, StoreUnavailable) as error:
        fail(str(error), EXIT_UNREACHABLE)
    except redis.RedisError as error:
        fail(f"cannot reach Redis: {error}; start it or fix BATON_REDIS_URL", EXIT_UNREACHABLE)
    except (NotFound, InvalidState) as error:
        fail(str(error), EXIT_FAILED)
    except BatonError as error:
        fail(str(error), EXIT_FAILED)


def stack() -> Stack:
    with clean_errors():
        return Stack(load_settings())


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        fail(
            f"{option} is not valid JSON ({error.msg} at character {error.pos}); pass an "
            """object such as '{"n": 5}'""",
            EXIT_USAGE,
        )
    if not isinstance(value, dict):
        fail(
            f"{option} must be a JSON object such as '{{\"n\": 5}}', got {type(value).__name__}",
            EXIT_USAGE,
        )
    return value


def parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    from workers._durations import seconds

    try:
        return time.time() - seconds(text, what="--since")
    except ValueError as error:
        fail(str(error), EXIT_USAGE)


# -- runs ------------------------------------------------------------------------------------


@app.command()
def run(
    event_type: Annotated[str, typer.Argument(help="The trigger's event type, e.g. chain.start")],
    data: Annotated[str, typer.Option(help="The event's fields as a JSON object.")] = "{}",
    wait: Annotated[bool, typer.Option(help="Wait until the run finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 300.0,
    module: Annotated[
        list[str] | None, typer.Option("--module", "-m", help="Actor module to import.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start a run with a trigger event."""
    fields = parse_json_object(data, "--data")
    parts = stack()
    with clean_errors():
        parts.check_reachable()
        parts.load_modules(module or [], event_type=event_type)
        event = parse_event(event_type, fields)
        created = parts.runtime.start_run(event)
        if not created.subscribed:
            err.print(
                f"[yellow]note:[/yellow] no actor subscribes to {event_type!r}; the run "
                "has nothing to do"
            )
        if wait:
            _wait_for(parts, created.run_id, timeout)
        _print_run(parts, created.run_id, as_json, brief=not wait)
        status = run_status(parts.store, created.run_id)
    if wait and status != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def _wait_for(parts: Stack, run_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with err.status(f"run {run_id} …", spinner="dots") if err.is_terminal else _nothing():
        while time.monotonic() < deadline:
            if run_status(parts.store, run_id) in ("succeeded", "failed", "canceled"):
                return
            time.sleep(0.05)
    fail(
        f"run {run_id} is still going after {timeout:g} s; follow it with "
        f"`baton runs show {run_id}`",
        EXIT_FAILED,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _print_run(parts: Stack, run_id: str, as_json: bool, *, brief: bool = False) -> None:
    detail = run_detail(parts.store, run_id)
    if as_json:
        out.print_json(_render.to_json(detail)) if out.is_terminal else print(
            _render.to_json(detail)
        )
    elif brief:
        out.print(f"run {run_id} {detail['run']['status']}")
    else:
        out.print(_render.run_view(detail))


@runs_app.command("list")
def runs_list(
    status: Annotated[
        str | None, typer.Option(help="running, waiting, succeeded, failed, canceled")
    ] = None,
    agent: Annotated[str | None, typer.Option()] = None,
    event_type: Annotated[str | None, typer.Option("--event-type")] = None,
    since: Annotated[str | None, typer.Option(help="e.g. 1h, 30m, 2d")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    before: Annotated[str | None, typer.Option(help="Cursor: runs older than this id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first."""
    valid = ("running", "waiting", "succeeded", "failed", "canceled")
    if status is not None and status not in valid:
        fail(f"--status {status!r} is not a run status; use one of {', '.join(valid)}", EXIT_USAGE)
    parts = stack()
    with clean_errors():
        found = list_runs(
            parts.store,
            RunFilter(
                status=status,
                agent=agent,
                event_type=event_type,
                since=parse_since(since),
                before_id=before,
                limit=limit,
            ),
        )
    if as_json:
        print(_render.to_json(found))
    else:
        out.print(_render.runs_table(found))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id, or its unique start or end.")],
    as_json: JsonOption = False,
) -> None:
    """Show a run: status, events, steps with timings and attempts, memory."""
    parts = stack()
    with clean_errors():
        _print_run(parts, resolve_run_id(parts.store, run_id), as_json)


@runs_app.command("diff")
def runs_diff(
    run_a: Annotated[str, typer.Argument(help="Run id, or its unique start or end (A).")],
    run_b: Annotated[
        str, typer.Argument(help="Run id or its unique start or end (B), e.g. a fork of A.")
    ],
    changed: Annotated[bool, typer.Option("--changed", help="Only the steps that differ.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Two runs step by step: inputs, outputs, tool choices, tokens, cost, latency."""
    from baton import _ops_views

    _ops_views.show_diff(stack(), run_a, run_b, changed_only=changed, as_json=as_json)


@runs_app.command("trace")
def runs_trace(
    run_id: Annotated[str, typer.Argument(help="Run id, or its unique start or end.")],
) -> None:
    """Draw a run's step tree with durations, from the store."""
    parts = stack()
    with clean_errors():
        out.print(_render.step_tree(run_detail(parts.store, resolve_run_id(parts.store, run_id))))


ReasonOption = Annotated[str | None, typer.Option(help="Why (required): kept with the operation")]
SinceOption = Annotated[str | None, typer.Option(help="Bulk: only runs created since, e.g. 2h.")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Bulk: at most this many runs.")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Bulk: count and show a sample; change nothing.")
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Bulk: act (else --dry-run).")]


@app.command()
def replay(
    run_id: Annotated[
        str | None,
        typer.Argument(
            help="Run id or its unique start or end; omit it to select runs with --status."
        ),
    ] = None,
    reason: ReasonOption = None,
    step: Annotated[str | None, typer.Option(help="In place: only this failed step.")] = None,
    from_step: Annotated[
        str | None, typer.Option("--from", help="Fork: a new run that re-executes from this step.")
    ] = None,
    edit: Annotated[
        str | None, typer.Option(help="Fork: a JSON object merged into the step's input event.")
    ] = None,
    edit_output: Annotated[
        str | None,
        typer.Option(
            "--edit-output",
            help="Fork from a model call: a JSON object merged into its recorded message, "
            "used instead of asking the model.",
        ),
    ] = None,
    recorded: Annotated[
        bool,
        typer.Option(
            "--recorded",
            help="Fork: reuse the parent's model and tool answers wherever the request is "
            "unchanged, and report where the runs diverge.",
        ),
    ] = False,
    status: Annotated[str | None, typer.Option(help="Bulk: runs with this status: failed.")] = None,
    agent: Annotated[str | None, typer.Option(help="Bulk: only this agent's runs.")] = None,
    actor: Annotated[
        str | None, typer.Option(help="Bulk: only runs whose failed step is this actor's.")
    ] = None,
    error: Annotated[
        str | None, typer.Option(help="Bulk: only runs whose failed step raised this error type.")
    ] = None,
    since: SinceOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Wait until the run finishes (default: --recorded)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Replay runs: in place (failed steps re-run; succeeded steps never), as a new run forked
    from a step (--from; --recorded reuses recorded answers), or many at once (--status failed)."""
    from baton import _ops

    _ops.replay_command(
        run_id=run_id,
        reason=reason,
        step=step,
        from_step=from_step,
        edit=edit,
        edit_output=edit_output,
        recorded=recorded,
        selection=_ops.SelectionOptions(status, agent, actor, error, since, limit, dry_run, yes),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command()
def cancel(
    run_id: Annotated[
        str | None,
        typer.Argument(
            help="Run id or its unique start or end; omit it to select runs with --status."
        ),
    ] = None,
    reason: ReasonOption = None,
    status: Annotated[
        str | None, typer.Option(help="Bulk: the runs with this status (running or waiting).")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Bulk: only this agent's runs.")] = None,
    actor: Annotated[str | None, typer.Option(help="Bulk: runs with this actor's steps.")] = None,
    error: Annotated[
        str | None, typer.Option(help="Bulk: only runs with a step whose last error is this type.")
    ] = None,
    since: SinceOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Cancel a live run, or many (--status running|waiting): nothing pending runs; nothing in
    flight is committed after this."""
    from baton import _ops

    _ops.cancel_command(
        run_id=run_id,
        reason=reason,
        selection=_ops.SelectionOptions(status, agent, actor, error, since, limit, dry_run, yes),
        as_json=as_json,
    )


@app.command()
def signal(
    run_id: Annotated[str, typer.Argument(help="Run id, or its unique start or end.")],
    name: Annotated[str, typer.Argument(help="The wait's name, e.g. approve.")],
    data: Annotated[str, typer.Option(help="JSON object handed to the waiting step.")] = "{}",
    step: Annotated[
        str | None,
        typer.Option(help="The waiting step, when several wait for this name (id, start or end)."),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Deliver to every step waiting for this name.")
    ] = False,
) -> None:
    """Send a named signal to a waiting run."""
    fields = parse_json_object(data, "--data")
    if step is not None and every:
        fail("--step and --all exclude each other: name one step, or send to all", EXIT_USAGE)
    parts = stack()
    with clean_errors():
        parts.check_reachable()
        full_id = resolve_run_id(parts.store, run_id)
        publish = send_signal(parts.store, full_id, name, fields, step=step, every=every)
        parts.runtime.publish(publish, confirm_now=True)
    out.print(f"signal {name!r} delivered to {len(publish)} waiting step(s) of run {full_id}")


def _require_reason(reason: str) -> None:
    if not reason.strip():
        fail("--reason must say why, e.g. --reason 'fixed the API key'", EXIT_USAGE)


# -- processes -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the store's schema (idempotent)."""
    parts = stack()
    with clean_errors():
        parts.upgrade_schema()
    out.print(f"store at {parts.store.url} is up to date")


@app.command()
def worker(
    modules: Annotated[list[str] | None, typer.Argument(help="Actor modules to import.")] = None,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, max=64)] = 1,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, max=256)] = WORKER_THREADS,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT (PORT+i for process i)."),
    ] = None,
) -> None:
    """Run steps: Dramatiq worker processes times threads, plus the relay and reconciler."""
    from baton._processes import run_worker_here, run_worker_processes

    parts = stack()
    with clean_errors():
        loaded = parts.load_modules(modules or [])
        if not loaded:
            fail(
                "no actor modules to run; name them (`baton worker examples.chain`) or set "
                "BATON_MODULES",
                EXIT_USAGE,
            )
        parts.check_reachable()
        if processes == 1:
            run_worker_here(parts, threads, metrics_port)
        else:
            run_worker_processes(loaded, processes, threads, metrics_port)


@app.command()
def serve(
    modules: Annotated[list[str] | None, typer.Argument(help="Actor modules to import.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """The gateway: webhooks, the run API, health and metrics over HTTP."""
    from gateway import GatewayConfig, create_app
    from gateway import serve as serve_gateway

    parts = stack()
    with clean_errors():
        parts.load_modules(modules or [])
        parts.check_reachable()
        settings = parts.settings
        try:
            gateway = create_app(
                parts.runtime,
                GatewayConfig(
                    api_token=settings.api_token,
                    github_secrets=settings.github_webhook_secrets,
                    standard_secrets=settings.standard_webhook_secrets,
                    webhook_max_bytes=settings.webhook_max_bytes,
                ),
            )
        except ValueError as error:
            fail(str(error), EXIT_USAGE)
    if settings.api_token is None:
        err.print("[yellow]note:[/yellow] BATON_API_TOKEN is not set: the run API answers 401")
    serve_gateway(gateway, host, port)


@app.command()
def up(
    modules: Annotated[list[str] | None, typer.Argument(help="Actor modules to import.")] = None,
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, max=64)] = 1,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, max=256)] = WORKER_THREADS,
) -> None:
    """Everything on one machine: Valkey, the store's schema, workers (and the gateway)."""
    from baton._processes import run_stack

    parts = stack()
    with clean_errors():
        parts.upgrade_schema()
        loaded = parts.load_modules(modules or [])
        parts.check_reachable()
        err.print(f"Redis at {parts.redis_url}; store at {parts.store.url}")
        run_stack(parts, loaded, processes=processes, threads=threads, port=port)


@app.command()
def demo() -> None:
    """The main job end to end on the embedded defaults."""
    from baton._demo import run_demo

    parts = stack()
    with clean_errors():
        code = run_demo(parts, out, err)
    raise typer.Exit(code)


# -- models and documents --------------------------------------------------------------------

model_app = typer.Typer(no_args_is_help=True, help="Baton's offline model.")
docs_app = typer.Typer(no_args_is_help=True, help="Documents agents can search.")
app.add_typer(model_app, name="model")
app.add_typer(docs_app, name="docs")

# -- dead letters; runs as data (label, export, stats) ---------------------------------------
# Imported here, not at the top: those modules use the helpers defined above.
from baton._data_cli import data_app  # noqa: E402
from baton._dlq_cli import dlq_app  # noqa: E402

app.add_typer(dlq_app, name="dlq")
app.add_typer(data_app)


@model_app.command("serve")
def model_serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    cassette: Annotated[Path | None, typer.Option(help="Replay this cassette file.")] = None,
    delay: Annotated[float, typer.Option(min=0, help="Seconds added to every answer.")] = 0.0,
) -> None:
    """Serve the offline model at http://HOST:PORT/v1 (any OpenAI client, any key)."""
    from workers.agents.offline_model import Cassette, CassetteError, OfflineModelConfig, serve

    try:
        loaded = Cassette.load(cassette) if cassette is not None else None
    except CassetteError as error:
        fail(str(error), EXIT_USAGE)
    err.print(f"offline model at http://{host}:{port}/v1")
    serve(host=host, port=port, config=OfflineModelConfig(cassette=loaded, delay_seconds=delay))


@docs_app.command("add")
def docs_add(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .rst).")],
) -> None:
    """Load documents into the store for the search_documents tool (re-adding replaces)."""
    from rich.progress import track

    from store._search import add_document

    files = _document_files(paths)
    if not files:
        fail("no .md, .txt or .rst files under " + ", ".join(map(str, paths)), EXIT_USAGE)
    parts = stack()
    added = 0
    with clean_errors():
        for path in track(files, description="loading", console=err, disable=len(files) < 5):
            text = path.read_text(errors="replace")
            title = next(
                (line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")),
                path.stem,
            )
            added += add_document(parts.store, str(path), title, text)
    out.print(f"{len(files)} document(s) loaded ({added} new)")


def _document_files(paths: list[Path]) -> list[Path]:
    suffixes = {".md", ".txt", ".rst"}
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            fail(f"{path} does not exist", EXIT_USAGE)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())
        elif path.suffix in suffixes:
            found.append(path)
    return found


# -- operations: what operators did ------------------------------------------------------------
from baton._ops_views import operations_app  # noqa: E402

app.add_typer(operations_app, name="operations")
