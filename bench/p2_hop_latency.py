"""P2: hop latency, from a step's commit to the next step's claim, in a chain of 20 ms bodies.

The figures come from the store: the gap is the next step's ``step_attempts.started_at``
(taken when its claim begins) minus the previous step's ``steps.finished_at`` (taken when
its commit begins), so a gap holds the commit, the publish, the wait in Redis and the
consumer's pick-up. The baseline is the same chain as a bare Dramatiq actor that sleeps,
then sends the next message itself: the gap Dramatiq alone adds.

Dramatiq's Redis consumer, finding its queue empty, sleeps before it looks again: 5-10 ms,
then 10-20, 20-40, 40-80 ms (doubling, jittered up to 2x), and once that passes the worker's
idle timeout (``RuntimeConfig.worker_idle_timeout_ms``, 100 ms by default) 50-100 % of it.
In a chain the queue is empty while each body runs, so the consumer is usually asleep when
the next message lands and the message waits out the rest of that sleep. The chain is
therefore measured at the default and again at a short timeout, for both Baton and the bare
actor. A middleware on each broker stamps when a message was enqueued and when a worker
thread got it, to split each gap into its parts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from bench._common import Result, Row, Sandbox, median, percentile, rows, say, wait_until
from bench._metered import MeteredStore
from bench.actors import Hop
from store import RUN_FINISHED, run_status
from workers import Runtime, RuntimeConfig, Worker
from workers._broker import Broker

TITLE = "hop latency: commit to next claim, 20 ms bodies"
THREADS = 8
SLEEP_MS = 20
DEFAULT_IDLE_MS = RuntimeConfig().worker_idle_timeout_ms
SHORT_IDLE_MS = 10
GOAL_P50_MS = 15.0
GOAL_P99_MS = 50.0

_HOPS = """
SELECT step.id AS step_id, previous.id AS previous_id,
       previous.finished_at AS ended, attempt.started_at AS started
FROM steps AS step
JOIN events AS event ON event.id = step.event_id
JOIN steps AS previous ON previous.id = event.cause_step_id
JOIN step_attempts AS attempt ON attempt.step_id = step.id AND attempt.attempt = 1
WHERE step.run_id = :run_id
"""


class _Stamps(Middleware):
    """When each message (keyed by its first argument) was enqueued and handed to a thread."""

    def __init__(self) -> None:
        self.enqueued: dict[Any, float] = {}
        self.received: dict[Any, float] = {}

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        if message.args:
            self.enqueued[message.args[0]] = time.time()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.args:
            self.received[message.args[0]] = time.time()


def run(quick: bool) -> Result:
    length = 50 if quick else 200
    result = Result("P2", TITLE)
    result.settings = {
        "mode": "in-process",
        "processes": 1,
        "threads": THREADS,
        "chain": f"{length} steps of time.sleep({SLEEP_MS / 1000:g})",
        "idle timeouts": f"{DEFAULT_IDLE_MS} ms (default, judged), {SHORT_IDLE_MS} ms (context)",
    }
    for idle_ms in (DEFAULT_IDLE_MS, SHORT_IDLE_MS):
        with Sandbox("p2") as sandbox:
            bare, bare_parts = _bare_chain(sandbox, length, idle_ms)
            sandbox.flush_redis()
            baton, baton_parts = _baton_chain(sandbox, length, idle_ms)
        judged = idle_ms == DEFAULT_IDLE_MS
        for label, fraction, goal in (("p50", 0.5, GOAL_P50_MS), ("p99", 0.99, GOAL_P99_MS)):
            value = percentile(baton, fraction)
            result.rows.append(
                Row(
                    f"hop gap {label}, idle timeout {idle_ms} ms",
                    value,
                    "ms",
                    baseline=percentile(bare, fraction),
                    baseline_label="bare",
                    goal=f"<= {goal:g} ms" if judged else "",
                    passed=value <= goal if judged else None,
                )
            )
        result.notes.append(
            f"idle timeout {idle_ms} ms, {len(baton)} hops: Baton min {min(baton):.1f} / p90 "
            f"{percentile(baton, 0.9):.1f} / max {max(baton):.1f} ms; bare min "
            f"{min(bare):.1f} / p90 {percentile(bare, 0.9):.1f} / max {max(bare):.1f} ms"
        )
        result.notes.append(
            f"idle timeout {idle_ms} ms, median parts of a Baton hop: {_describe(baton_parts)}"
        )
        result.notes.append(
            f"idle timeout {idle_ms} ms, median parts of a bare hop: {_describe(bare_parts)}"
        )
    result.notes.append(
        "why the idle timeout matters: each time Dramatiq's consumer finds its queue empty "
        "it sleeps before looking again: 5-10, then 10-20, 20-40, 40-80 ms, and once past the "
        "idle timeout 50-100 % of it. During a 20 ms body it is usually in its 10-20 or "
        "20-40 ms sleep when the next message lands, and the message waits out the rest of "
        "it: that is the 'in Redis' part and the tail up to ~40 ms. With 20 ms bodies the "
        "100 ms cap is not reached; it bounds hops after bodies or idle spells over ~50 ms, "
        "which wait up to 100 ms. A short timeout (10 ms) caps every wait at 10 ms but polls "
        "Redis once per queue every 5-10 ms per worker process while there is no work."
    )
    return result


def _describe(parts: dict[str, list[float]]) -> str:
    return ", ".join(f"{name} {median(values):.2f} ms" for name, values in parts.items())


def _bare_chain(
    sandbox: Sandbox, length: int, idle_ms: int
) -> tuple[list[float], dict[str, list[float]]]:
    broker = Broker(url=sandbox.redis_url)
    stamps = _Stamps()
    broker.add_middleware(stamps)
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    done = threading.Event()

    def bare_hop(index: int) -> None:
        starts[index] = time.time()
        time.sleep(SLEEP_MS / 1000)
        ends[index] = time.time()
        if index < length:
            chained.send(index + 1)
        else:
            done.set()

    chained = dramatiq.Actor(
        bare_hop,
        broker=broker,
        actor_name="bench_bare_hop",
        queue_name="default",
        priority=0,
        options={"max_retries": 0},
    )
    worker = dramatiq.Worker(broker, worker_threads=THREADS, worker_timeout=idle_ms)
    worker.start()
    try:
        say(f"P2: bare Dramatiq chain of {length}, idle timeout {idle_ms} ms")
        chained.send(1)
        if not done.wait(timeout=length * 1.0 + 30):
            raise TimeoutError(f"the bare chain reached {len(ends)} of {length} steps")
    finally:
        worker.stop()
        broker.close()
    hops = range(2, length + 1)
    parts = {
        "send": [(stamps.enqueued[i] - ends[i - 1]) * 1000 for i in hops],
        "in Redis until a thread has it": [
            (stamps.received[i] - stamps.enqueued[i]) * 1000 for i in hops
        ],
        "thread to body": [(starts[i] - stamps.received[i]) * 1000 for i in hops],
    }
    return [(starts[i] - ends[i - 1]) * 1000 for i in hops], parts


def _baton_chain(
    sandbox: Sandbox, length: int, idle_ms: int
) -> tuple[list[float], dict[str, list[float]]]:
    store = sandbox.store(MeteredStore)
    assert isinstance(store, MeteredStore)
    config = replace(RuntimeConfig(), worker_idle_timeout_ms=idle_ms)
    runtime = Runtime(store, sandbox.redis_url, config)
    stamps = _Stamps()
    runtime.broker.add_middleware(stamps)
    worker = Worker(runtime, threads=THREADS)
    worker.start()
    try:
        say(f"P2: Baton chain of {length}, idle timeout {idle_ms} ms")
        run_id = runtime.start_run(Hop(i=1, n=length, sleep_ms=SLEEP_MS)).run_id
        wait_until(
            lambda: run_status(store, run_id) in RUN_FINISHED,
            timeout=length * 1.0 + 30,
            every=0.2,
            what=f"the {length}-step chain finishing",
        )
    finally:
        worker.stop(timeout_ms=10_000)
        runtime.broker.close()
    status = run_status(store, run_id)
    if status != "succeeded":
        raise RuntimeError(f"the chain run ended {status}")
    hops = rows(store, _HOPS, run_id=run_id)
    if len(hops) != length - 1:
        raise RuntimeError(f"expected {length - 1} hops in the store, found {len(hops)}")
    committed = {t.step_id: t.ended_at for t in store.transactions if t.label == "commit_and_claim"}
    parts: dict[str, list[float]] = {
        "commit": [],
        "publish": [],
        "in Redis until a thread has it": [],
        "thread to claim": [],
    }
    for hop in hops:
        commit_end = committed[hop.previous_id]
        enqueued, received = stamps.enqueued[hop.step_id], stamps.received[hop.step_id]
        parts["commit"].append((commit_end - hop.ended) * 1000)
        parts["publish"].append((enqueued - commit_end) * 1000)
        parts["in Redis until a thread has it"].append((received - enqueued) * 1000)
        parts["thread to claim"].append((hop.started - received) * 1000)
    return [(hop.started - hop.ended) * 1000 for hop in hops], parts
