"""Prometheus metrics of the workers, on prometheus_client's default registry.

The default registry is what ``prometheus_client.start_http_server`` (``serve_metrics``) and
the gateway's ``/metrics`` expose, so a process that runs steps, a gateway, or both shows
these series without wiring. Each worker process counts what it did itself; Prometheus sums
the processes.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server
from sqlalchemy import Connection, Engine, event

from store import Store
from store._agents import Usage
from store._appending import FINISHED_RUNS

runs_finished = Counter(
    "baton_runs_finished",
    "Runs that reached a final status in a transaction of this process, by status",
    ["status"],
)
steps = Counter(
    "baton_steps",
    "Step attempts run by this process, by actor and outcome (succeeded, retrying, failed, "
    "parked, lease_lost, error)",
    ["actor", "outcome"],
)
step_seconds = Histogram(
    "baton_step_duration_seconds",
    "Time from claiming a step to its outcome being committed, by actor",
    ["actor"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
queue_lag_seconds = Histogram(
    "baton_step_queue_lag_seconds",
    "Time from a step becoming ready to a worker claiming it, by actor",
    ["actor"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
model_tokens = Counter(
    "baton_model_tokens",
    "Tokens of the model calls made by this process, by agent, model and kind (input, output)",
    ["agent", "model", "kind"],
)
model_cost_usd = Counter(
    "baton_model_cost_usd",
    "What the model calls made by this process cost, in US dollars, by agent and model",
    ["agent", "model"],
)
async_commits = Counter(
    "baton_async_commits",
    "Commits of async steps by where they ran: on the event loop (SQLite's writer was free "
    "at once) or in a thread (it was busy, or the store is PostgreSQL)",
    ["path"],
)
dead_letters = Counter(
    "baton_dead_letters",
    "Queue messages this process dead-lettered (malformed, or for an unknown actor), by queue",
    ["queue"],
)

_watched: set[int] = set()
_watch_lock = threading.Lock()

# Each step's series, looked up once: ``labels()`` validates and locks on every call, a
# cost paid on every step otherwise.
_step_series: dict[tuple[str, str], tuple[Any, Any]] = {}
_lag_series: dict[str, Any] = {}


def step_finished(actor: str, outcome: str, seconds: float) -> None:
    series = _step_series.get((actor, outcome))
    if series is None:
        series = _step_series[actor, outcome] = (
            steps.labels(actor, outcome),
            step_seconds.labels(actor),
        )
    count, duration = series
    count.inc()
    duration.observe(seconds)


def step_claimed(actor: str, lag_seconds: float) -> None:
    lag = _lag_series.get(actor)
    if lag is None:
        lag = _lag_series[actor] = queue_lag_seconds.labels(actor)
    lag.observe(max(lag_seconds, 0.0))


def model_used(agent: str, model: str, usage: Usage) -> None:
    """Count a model call that was really made (a recorded response reused costs nothing)."""
    model_tokens.labels(agent, model, "input").inc(usage.input_tokens)
    model_tokens.labels(agent, model, "output").inc(usage.output_tokens)
    model_cost_usd.labels(agent, model).inc(usage.cost_usd)


_commit_paths = {path: async_commits.labels(path) for path in ("event_loop", "thread")}


def async_step_committed(path: str) -> None:
    _commit_paths[path].inc()


def dead_lettered(queue: str) -> None:
    dead_letters.labels(queue).inc()


def watch_store(store: Store) -> None:
    """Count the runs that the store's write transactions in this process finish, at commit.

    The store notes each run it finishes in the transaction's connection; a rolled-back
    transaction's notes are dropped, so only committed outcomes are counted.
    """
    with _watch_lock:
        if id(store.engine) in _watched:
            return
        _watched.add(id(store.engine))
        _listen(store.engine)


def _listen(engine: Engine) -> None:
    def opened(connection: Connection) -> None:
        connection.info[FINISHED_RUNS] = []

    def committed(connection: Connection) -> None:
        for status in connection.info.pop(FINISHED_RUNS, None) or ():
            runs_finished.labels(status).inc()

    def rolled_back(connection: Connection) -> None:
        connection.info.pop(FINISHED_RUNS, None)

    event.listen(engine, "begin", opened)
    event.listen(engine, "commit", committed)
    event.listen(engine, "rollback", rolled_back)


def serve_metrics(port: int, address: str = "0.0.0.0") -> Any:
    """Expose the default registry at ``http://address:port/metrics`` from a daemon thread;
    returns (server, thread) so a caller can shut it down."""
    return start_http_server(port, addr=address)
