"""P1: no-op step throughput against a bare Dramatiq actor on the same broker and settings.

Enqueue-then-drain: the whole backlog is published first, then a worker is started and
timed until the last message is done. Both sides run in this process with the same
``dramatiq.Worker`` thread count and idle timeout, on the same Valkey, through Baton's own
``Broker`` class (a RedisBroker with Baton's middleware), so the only difference is
Baton's step protocol: claim, commit, publish of the (zero) children, run settle.

The machine is shared, so the sides alternate over a few rounds (bare then Baton, then
Baton then bare) and the best round of each side is compared: other processes can only
slow a round down.
"""

from __future__ import annotations

import threading
import time

import dramatiq

from bench._common import Result, Row, Sandbox, median, say, scalar, wait_until
from bench._metered import MeteredStore
from bench.actors import Noop
from store import NewEvent, Publish, Store, claim_step, commit_step, create_run
from workers import Runtime, RuntimeConfig, Worker
from workers._broker import Broker

TITLE = "no-op step throughput vs bare Dramatiq"
THREADS = 8
GOAL = 0.5
# Sized for roughly 5 s per side and round on a 2-core machine.
FULL = {"rounds": 2, "bare": 10_000, "baton": 1_500, "serial": 500, "metered": 200}
QUICK = {"rounds": 1, "bare": 3_000, "baton": 300, "serial": 200, "metered": 50}
_FINISHED = "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed', 'canceled')"


def run(quick: bool) -> Result:
    sizes = QUICK if quick else FULL
    config = RuntimeConfig()
    result = Result("P1", TITLE)
    result.settings = {
        "mode": "in-process, enqueue then drain",
        "processes": 1,
        "threads": THREADS,
        "worker_timeout_ms": config.worker_idle_timeout_ms,
        "bare messages per round": sizes["bare"],
        "Baton runs per round (1 step each)": sizes["baton"],
        "rounds": f"{sizes['rounds']}, best of each side",
        "maintenance": "on (as `baton worker`)",
    }
    bare_rates: list[float] = []
    baton_rates: list[float] = []
    serial_rates: list[float] = []
    for round_number in range(sizes["rounds"]):
        with Sandbox("p1") as sandbox:
            # Alternate which side goes first, so neither always meets the warmer machine.
            for side in ("bare", "baton") if round_number % 2 == 0 else ("baton", "bare"):
                if side == "bare":
                    bare_rates.append(_bare(sandbox, sizes["bare"], config.worker_idle_timeout_ms))
                else:
                    baton_rates.append(_baton(sandbox, sandbox.store(), sizes["baton"], config))
                sandbox.flush_redis()
            serial_rates.append(_serial(sandbox, sandbox.store(), sizes["serial"]))
    bare_rate, baton_rate, ceiling = max(bare_rates), max(baton_rates), max(serial_rates)
    result.notes.append(
        "rounds: bare "
        + ", ".join(f"{r:,.0f}" for r in bare_rates)
        + "/s; Baton "
        + ", ".join(f"{r:,.0f}" for r in baton_rates)
        + "/s; store only "
        + ", ".join(f"{r:,.0f}" for r in serial_rates)
        + "/s"
    )
    result.rows.append(
        Row(
            "no-op steps per second",
            baton_rate,
            "/s",
            baseline=bare_rate,
            baseline_label="bare actor",
            goal=f">= {GOAL} of bare",
            passed=baton_rate >= GOAL * bare_rate,
        )
    )
    with Sandbox("p1-metered") as sandbox:
        metered = sandbox.store(MeteredStore)
        assert isinstance(metered, MeteredStore)
        _serial(sandbox, metered, sizes["metered"])
    result.rows.append(
        Row(
            "store only: claim+commit, 1 thread, no broker",
            ceiling,
            "/s",
            baseline=bare_rate,
            baseline_label="bare actor",
        )
    )
    result.notes.append(_describe_sql(metered, sizes["metered"]))
    result.notes.append(
        f"the store-only row runs claim_step + commit_step back to back in one thread with no "
        f"broker: {1000 / ceiling:.2f} ms of store work per no-op step, against "
        f"{1000 / bare_rate:.2f} ms for the bare actor's whole message; SQLite takes one "
        "writer at a time and the Python around each statement holds the GIL, so threads "
        "overlap only the part spent inside SQLite (the worker's threads also share commits: "
        "store._writer's group commit, which one thread alone never uses)"
    )
    return result


def _bare(sandbox: Sandbox, count: int, idle_ms: int) -> float:
    broker = Broker(url=sandbox.redis_url)
    done = threading.Event()
    lock = threading.Lock()
    state = {"count": 0, "finished": 0.0}

    def bare_noop() -> None:
        with lock:
            state["count"] += 1
            if state["count"] == count:
                state["finished"] = time.perf_counter()
                done.set()

    bare = dramatiq.Actor(
        bare_noop,
        broker=broker,
        actor_name="bench_bare_noop",
        queue_name="default",
        priority=0,
        options={"max_retries": 0},
    )
    say(f"P1: enqueueing {count:,} bare Dramatiq messages")
    for _ in range(count):
        bare.send()
    worker = dramatiq.Worker(broker, worker_threads=THREADS, worker_timeout=idle_ms)
    started = time.perf_counter()
    worker.start()
    try:
        if not done.wait(timeout=300):
            raise TimeoutError(f"bare actor ran {state['count']} of {count} messages in 300 s")
    finally:
        worker.stop()
        broker.close()
    rate = count / (state["finished"] - started)
    say(f"P1: bare Dramatiq drained {count:,} in {count / rate:.2f} s: {rate:,.0f}/s")
    return rate


def _baton(sandbox: Sandbox, store: Store, count: int, config: RuntimeConfig) -> float:
    runtime = Runtime(store, sandbox.redis_url, config)
    say(f"P1: starting {count:,} one-step Baton runs")
    _start_runs(runtime, count)
    worker = Worker(runtime, threads=THREADS)
    started = time.time()
    worker.start()
    try:
        wait_until(
            lambda: scalar(store, _FINISHED) >= count,
            timeout=600,
            every=0.1,
            what=f"{count} Baton runs finishing",
        )
    finally:
        worker.stop(timeout_ms=10_000)
        runtime.broker.close()
    finished = scalar(store, "SELECT max(finished_at) FROM runs")
    failed = scalar(store, "SELECT count(*) FROM runs WHERE status != 'succeeded'")
    if failed:
        raise RuntimeError(f"{failed} of {count} no-op runs did not succeed")
    rate = count / (finished - started)
    say(f"P1: Baton drained {count:,} runs in {count / rate:.2f} s: {rate:,.0f}/s")
    return float(rate)


def _start_runs(runtime: Runtime, count: int) -> None:
    """Create the runs, then publish their first steps in batches (set-up, not timed)."""
    trigger = NewEvent(Noop.type, Noop().model_dump(mode="json"))
    batch: list[Publish] = []
    for index in range(count):
        batch.extend(create_run(runtime.store, trigger, runtime.route).publish)
        if len(batch) >= 500 or index == count - 1:
            runtime.publish(batch, confirm_now=True)
            batch = []


def _serial(sandbox: Sandbox, store: Store, count: int) -> float:
    """No-op steps per second of claim_step + commit_step alone, one after another."""
    runtime = Runtime(store, sandbox.redis_url, RuntimeConfig())
    trigger = NewEvent(Noop.type, Noop().model_dump(mode="json"))
    step_ids = [
        p.step_id for _ in range(count) for p in create_run(store, trigger, runtime.route).publish
    ]
    started = time.perf_counter()
    for step_id in step_ids:
        claim = claim_step(store, step_id, runtime.owner, runtime.config.lease_seconds)
        if claim.step is None:
            raise RuntimeError(f"could not claim step {step_id}: {claim.outcome} {claim.detail}")
        commit_step(
            store,
            claim.step,
            runtime.owner,
            emitted=[],
            fan_out=False,
            memory_writes={},
            router=runtime.route,
        )
    rate = count / (time.perf_counter() - started)
    runtime.broker.close()
    return rate


def _describe_sql(store: MeteredStore, count: int) -> str:
    """What one no-op step asks of the store, by transaction."""
    parts = []
    for label in ("claim_step", "commit_and_claim"):
        records = [r for r in store.transactions if r.label == label]
        statements = sum(r.statements for r in records) / count
        writes = sum(r.writes for r in records) / count
        parts.append(
            f"{label}: {len(records) / count:g} transaction, {statements:g} statements "
            f"({writes:g} writes), median {median([r.seconds for r in records]) * 1000:.2f} ms"
        )
    return "per no-op step (metered, 1 thread): " + "; ".join(parts)
