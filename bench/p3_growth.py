"""P3: growth. What step ~1000 of a run costs against what step ~10 of the same run costs.

One run of a long chain on an in-process worker; each step reads and writes a counter in run
memory (as ``examples.chain`` does) and emits the next event. A metered store times each
step's claim and commit transactions (from asking for the write lock to the commit) and
counts the bytes of the parameters their INSERT/UPDATE/DELETE statements send. The figure is
the median over a window of 50 steps near the end, the baseline the median over steps
10-59 of the same run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from typing import Any

from bench._common import Result, Row, Sandbox, median, rows, say, wait_until
from bench._metered import MeteredStore, Transaction
from bench.actors import Tick
from store import RUN_FINISHED, run_status
from workers import Runtime, RuntimeConfig, Worker

TITLE = "growth: step ~1000 vs step ~10 of one run"
THREADS = 8
WINDOW = 50
FIRST = 10
GOAL = 1.2
# Only shortens the wall time: the measured transactions do not include waits in Redis.
IDLE_MS = 10

_STEPS = """
SELECT step.id, event.data
FROM steps AS step JOIN events AS event ON event.id = step.event_id
WHERE step.run_id = :run_id AND event.type = :type
"""


def run(quick: bool) -> Result:
    length = 300 if quick else 1000
    result = Result("P3", TITLE)
    result.settings = {
        "mode": "in-process",
        "processes": 1,
        "threads": THREADS,
        "chain": f"{length} steps, memory read+write each",
        "windows": f"steps {FIRST}-{FIRST + WINDOW - 1} vs {length - WINDOW + 1}-{length}",
        "worker_idle_timeout_ms": IDLE_MS,
    }
    with Sandbox("p3") as sandbox:
        store = sandbox.store(MeteredStore)
        assert isinstance(store, MeteredStore)
        size_before = _database_bytes(sandbox, store)
        per_step = _chain(sandbox, store, length)
        size_after = _database_bytes(sandbox, store)

    def window(start: int) -> list[dict[str, float]]:
        return [per_step[i] for i in range(start, start + WINDOW) if i in per_step]

    early, late = window(FIRST), window(length - WINDOW + 1)
    if len(early) < WINDOW or len(late) < WINDOW:
        raise RuntimeError(
            f"only {len(per_step)} of {length} steps were claimed and committed once each"
        )
    for measure, key, unit, scale in (
        ("claim+commit time per step", "seconds", "ms", 1000.0),
        ("bytes written per step", "bytes", "B", 1.0),
    ):
        early_value = median([s[key] for s in early]) * scale
        late_value = median([s[key] for s in late]) * scale
        result.rows.append(
            Row(
                f"{measure} at ~{length}",
                late_value,
                unit,
                baseline=early_value,
                baseline_label=f"at ~{FIRST}",
                goal=f"<= {GOAL:g}x",
                passed=late_value <= GOAL * early_value,
            )
        )
    parts = []
    for key, label in (("claim", "claim"), ("commit", "commit")):
        parts.append(
            f"{label} {median([s[key] for s in early]) * 1000:.2f} -> "
            f"{median([s[key] for s in late]) * 1000:.2f} ms"
        )
    result.notes.append(
        "medians early -> late: "
        + ", ".join(parts)
        + f"; statements per step {median([s['statements'] for s in early]):.0f} -> "
        f"{median([s['statements'] for s in late]):.0f}"
    )
    result.notes.append(
        f"SQLite file grew {(size_after - size_before) / 1024:,.0f} KiB over the run "
        f"({(size_after - size_before) / length:,.0f} B/step incl. page slack and indexes; "
        "WAL checkpointed before each reading)"
    )
    return result


def _chain(sandbox: Sandbox, store: MeteredStore, length: int) -> dict[int, dict[str, float]]:
    config = replace(RuntimeConfig(), worker_idle_timeout_ms=IDLE_MS)
    runtime = Runtime(store, sandbox.redis_url, config)
    worker = Worker(runtime, threads=THREADS)
    worker.start()
    try:
        say(f"P3: Baton chain of {length} steps")
        run_id = runtime.start_run(Tick(i=1, n=length)).run_id
        wait_until(
            lambda: run_status(store, run_id) in RUN_FINISHED,
            timeout=length * 0.5 + 60,
            every=0.25,
            what=f"the {length}-step chain finishing",
        )
    finally:
        worker.stop(timeout_ms=10_000)
        runtime.broker.close()
    status = run_status(store, run_id)
    if status != "succeeded":
        raise RuntimeError(f"the chain run ended {status}")
    found = rows(store, _STEPS, run_id=run_id, type=Tick.type)
    position = {row.id: _index(row.data) for row in found}
    by_step: dict[str, dict[str, list[Transaction]]] = defaultdict(lambda: defaultdict(list))
    for record in store.transactions:
        step_id = record.step_id
        if step_id is None or step_id not in position:
            continue
        if record.label in ("claim_step", "commit_and_claim"):
            by_step[step_id][record.label].append(record)
    per_step: dict[int, dict[str, float]] = {}
    for step_id, kinds in by_step.items():
        claims, commits = kinds.get("claim_step", []), kinds.get("commit_and_claim", [])
        if len(claims) != 1 or len(commits) != 1:
            continue  # redelivered or retried: not a clean sample
        claim, commit = claims[0], commits[0]
        per_step[position[step_id]] = {
            "claim": claim.seconds,
            "commit": commit.seconds,
            "seconds": claim.seconds + commit.seconds,
            "bytes": claim.bytes_written + commit.bytes_written,
            "statements": claim.statements + commit.statements,
        }
    return per_step


def _index(data: Any) -> int:
    if isinstance(data, str):
        data = json.loads(data)
    return int(data["i"])


def _database_bytes(sandbox: Sandbox, store: MeteredStore) -> int:
    connection = store.engine.raw_connection()
    try:
        connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    wal = sandbox.database_path.with_name(sandbox.database_path.name + "-wal")
    return sandbox.database_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
