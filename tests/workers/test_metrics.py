"""Prometheus metrics of the workers: runs by final status, steps by actor and outcome, step
duration and queue lag, model tokens and cost, dead letters; on the default registry and
served over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from events import Event
from examples.triage import IssueOpened
from store import Store, cancel_run, run_detail
from store._appending import note_run_finished
from store._tables import model_calls
from tests.conftest import REPO, wait_for_run
from workers import Context, Runtime, Worker, actor
from workers._metrics import serve_metrics, watch_store
from workers.agents.offline_model import OfflineModelConfig, OfflineModelHandle, start_in_thread


class Measured(Event, type="t_metrics.measured"):
    failures: int = 0
    pause: float = 0.0


class Waiting(Event, type="t_metrics.waiting"):
    pass


@actor(on=Measured, retries=2)
def measured(event: Measured, ctx: Context) -> None:
    time.sleep(event.pause)
    if ctx.attempt <= event.failures:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")


@actor(on=Waiting)
def waiting(event: Waiting, ctx: Context) -> None:
    ctx.wait_for("never")


MEASURED = "tests.workers.test_metrics.measured"
WAITING = "tests.workers.test_metrics.waiting"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """What a sample gained since this object was made."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = sample(name, **labels)

    def __call__(self) -> float:
        return sample(self.name, **self.labels) - self.start


def eventually(delta: Delta, expected: float, timeout: float = 10.0) -> float:
    """Spans and metrics of a step are recorded just after its commit: allow a moment."""
    deadline = time.monotonic() + timeout
    while delta() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return delta()


@pytest.fixture
def offline_model() -> Iterator[OfflineModelHandle]:
    handle = start_in_thread(OfflineModelConfig())
    yield handle
    handle.stop()


def test_steps_are_counted_by_actor_and_outcome_with_duration_and_queue_lag(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker, and the counters as they are
    worker = start_worker()
    succeeded = Delta("baton_steps_total", actor=MEASURED, outcome="succeeded")
    retrying = Delta("baton_steps_total", actor=MEASURED, outcome="retrying")
    durations = Delta("baton_step_duration_seconds_count", actor=MEASURED)
    slow = Delta("baton_step_duration_seconds_bucket", actor=MEASURED, le="0.1")
    lags = Delta("baton_step_queue_lag_seconds_count", actor=MEASURED)
    # When two runs go through: one first fails once, each step takes 0.2 s
    first = worker.runtime.start_run(Measured(failures=1, pause=0.2)).run_id
    second = worker.runtime.start_run(Measured(pause=0.2)).run_id
    assert wait_for_run(store, first) == wait_for_run(store, second) == "succeeded"
    # Then three attempts were counted: two succeeded, one will be retried
    assert eventually(succeeded, 2) == 2
    assert retrying() == 1
    # And each attempt's duration was observed, none under 0.1 s
    assert durations() == 3 and slow() == 0
    # And each claim's queue lag
    assert lags() == 3


def test_runs_are_counted_by_final_status_once_committed(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker, and the counters as they are
    worker = start_worker()
    succeeded = Delta("baton_runs_finished_total", status="succeeded")
    failed = Delta("baton_runs_finished_total", status="failed")
    canceled = Delta("baton_runs_finished_total", status="canceled")
    # When one run succeeds, one fails for good, and one waiting run is canceled
    good = worker.runtime.start_run(Measured()).run_id
    bad = worker.runtime.start_run(Measured(failures=3)).run_id
    parked = worker.runtime.start_run(Waiting()).run_id
    assert wait_for_run(store, good) == "succeeded"
    assert wait_for_run(store, bad) == "failed"
    assert wait_for_run(store, parked, until=frozenset({"waiting"})) == "waiting"
    cancel_run(store, parked, "no longer needed")
    # Then each is counted once, under its status
    assert eventually(succeeded, 1) == 1
    assert failed() == 1
    assert canceled() == 1


def test_a_rolled_back_transaction_counts_no_run(store: Store, redis_url: str) -> None:
    # Given the store watched by this process's metrics
    watch_store(store)
    finished = Delta("baton_runs_finished_total", status="succeeded")
    # When a transaction that finished a run rolls back
    with pytest.raises(RuntimeError), store.transaction() as connection:
        note_run_finished(connection, "succeeded")
        raise RuntimeError("rolled back")
    # Then nothing is counted; when one commits, it is
    assert finished() == 0
    with store.transaction() as connection:
        note_run_finished(connection, "succeeded")
    assert finished() == 1


def test_model_tokens_and_cost_are_counted_by_agent_and_model(
    store: Store, make_runtime: Callable[..., Runtime], offline_model: OfflineModelHandle
) -> None:
    # Given a worker whose model is the offline model
    runtime = make_runtime(model_base_url=offline_model.base_url, model_api_key="offline")
    worker = Worker(runtime, threads=4)
    labels: dict[str, Any] = {"agent": "triage", "model": "gpt-4.1-mini"}
    input_tokens = Delta("baton_model_tokens_total", kind="input", **labels)
    output_tokens = Delta("baton_model_tokens_total", kind="output", **labels)
    cost = Delta("baton_model_cost_usd_total", **labels)
    worker.start()
    try:
        # When the triage agent handles an issue
        payload = json.loads((REPO / "examples/payloads/github.issues.opened.json").read_text())
        run_id = runtime.start_run(IssueOpened.model_validate(payload)).run_id
        assert wait_for_run(store, run_id) == "succeeded"
    finally:
        worker.stop(timeout_ms=5_000)
    # Then the counters grew by exactly what the store recorded for its model calls
    with store.read() as connection:
        calls = connection.execute(
            select(model_calls.c.input_tokens, model_calls.c.output_tokens).where(
                model_calls.c.run_id == run_id
            )
        ).all()
    assert len(calls) == 2
    assert input_tokens() == sum(c.input_tokens for c in calls) > 0
    assert output_tokens() == sum(c.output_tokens for c in calls) > 0
    spent = run_detail(store, run_id)["run"]["cost_usd"]
    assert spent > 0 and cost() == pytest.approx(spent)


def test_dead_letters_are_counted_by_queue(start_worker: Callable[..., Worker]) -> None:
    # Given a worker
    worker = start_worker()
    dead = Delta("baton_dead_letters_total", queue="default")
    # When a message with arguments Baton never sends arrives
    worker.runtime.broker.enqueue(
        dramatiq.Message(
            queue_name="default", actor_name=MEASURED, args=(1, 2), kwargs={}, options={}
        )
    )
    # Then it is dead-lettered, and counted
    assert eventually(dead, 1) == 1


def test_the_default_registry_is_served_over_http(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a step that ran, and the metrics served on a free port
    worker = start_worker()
    run_id = worker.runtime.start_run(Measured()).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    server, thread = serve_metrics(0, "127.0.0.1")
    try:
        # When Prometheus scrapes it
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # Then every worker series is there
    for name in (
        "baton_runs_finished_total",
        "baton_steps_total",
        "baton_step_duration_seconds_bucket",
        "baton_step_queue_lag_seconds_bucket",
        "baton_model_tokens_total",
        "baton_model_cost_usd_total",
        "baton_dead_letters_total",
    ):
        assert f"# TYPE {name.removesuffix('_total').removesuffix('_bucket')}" in text, name
    assert f'baton_steps_total{{actor="{MEASURED}",outcome="succeeded"}}' in text
