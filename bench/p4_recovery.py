"""P4: recovery. A worker process is SIGKILLed mid-step; how long until the step runs again?

Two real ``baton worker bench.actors`` processes share the broker and the store. A run
whose step sleeps on its first attempt is started; once a worker has claimed it, that
worker's process is SIGKILLed and the clock runs until the store records the step's second
attempt (``step_attempts.started_at``), which the other worker claims after the lease ran
out and the reconciler re-published the step. The killed worker is replaced before the
next trial. Expected: the rest of the lease (renewed every lease/3), then up to one
reconciler interval, then the broker's pick-up; longer when the killed worker was also the
reconciler's leader, whose Redis lock (3 intervals, at least 2 s) must lapse first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench._common import REPO, Result, Row, Sandbox, median, rows, say, wait_until
from bench.actors import Stall
from store import RUN_FINISHED, Store, run_status
from workers import Runtime, RuntimeConfig
from workers._maintenance import LEADER_KEY

TITLE = "recovery: SIGKILLed worker until the step runs again"
LEASE_SECONDS = 3.0
RECONCILE_SECONDS = RuntimeConfig().reconcile_interval_seconds
THREADS = 2
STALL_SECONDS = 60.0
KILL_AFTER_SECONDS = 1.0
SLACK_SECONDS = 2.0

_ATTEMPTS = """
SELECT attempt, worker, started_at FROM step_attempts WHERE run_id = :run_id ORDER BY attempt
"""


def run(quick: bool) -> Result:
    trials = 2 if quick else 5
    budget = LEASE_SECONDS + SLACK_SECONDS
    result = Result("P4", TITLE)
    result.settings = {
        "mode": "2 x `baton worker bench.actors` subprocesses",
        "processes": "1 per worker",
        "threads": THREADS,
        "BATON_LEASE_SECONDS": f"{LEASE_SECONDS:g}",
        "BATON_RECONCILE_INTERVAL_SECONDS": f"{RECONCILE_SECONDS:g}",
        "kill": f"SIGKILL {KILL_AFTER_SECONDS:g} s into the step",
        "trials": trials,
    }
    recoveries: list[float] = []
    with Sandbox("p4") as sandbox, _Workers(sandbox) as pool:
        store = sandbox.store()
        runtime = Runtime(store, sandbox.redis_url, RuntimeConfig(lease_seconds=LEASE_SECONDS))
        leader = redis.Redis.from_url(sandbox.redis_url)
        try:
            pool.spawn()
            pool.spawn()
            for trial in range(1, trials + 1):
                seconds, detail = _trial(store, runtime, leader, pool)
                recoveries.append(seconds)
                result.notes.append(f"trial {trial}: {seconds:.2f} s; {detail}")
                say(f"P4: trial {trial}: recovered in {seconds:.2f} s ({detail})")
                if trial < trials:
                    pool.spawn()
        finally:
            leader.close()
            runtime.broker.close()
    worst = max(recoveries)
    result.rows.append(
        Row(
            f"kill to next attempt, worst of {trials}",
            worst,
            "s",
            baseline=LEASE_SECONDS,
            baseline_label="lease",
            goal=f"<= lease + {SLACK_SECONDS:g} s ({budget:g} s)",
            passed=worst <= budget,
        )
    )
    result.rows.append(
        Row(
            f"kill to next attempt, median of {trials}",
            median(recoveries),
            "s",
            baseline=LEASE_SECONDS,
            baseline_label="lease",
        )
    )
    return result


def _trial(
    store: Store, runtime: Runtime, leader: redis.Redis, pool: _Workers
) -> tuple[float, str]:
    run_id = runtime.start_run(Stall(seconds=STALL_SECONDS)).run_id
    wait_until(
        lambda: bool(rows(store, _ATTEMPTS, run_id=run_id)),
        timeout=30,
        every=0.02,
        what="a worker claiming the stalling step",
    )
    first = rows(store, _ATTEMPTS, run_id=run_id)[0]
    victim = _pid(first.worker)
    if victim not in pool.processes:
        raise RuntimeError(f"the step was claimed by {first.worker!r}, not one of our workers")
    time.sleep(max(0.0, first.started_at + KILL_AFTER_SECONDS - time.time()))
    leader_before = leader.get(LEADER_KEY)
    killed_at = time.time()
    pool.kill(victim)
    wait_until(
        lambda: len(rows(store, _ATTEMPTS, run_id=run_id)) >= 2,
        timeout=LEASE_SECONDS + 60,
        every=0.01,
        what="the step's second attempt",
    )
    second = rows(store, _ATTEMPTS, run_id=run_id)[1]
    wait_until(
        lambda: run_status(store, run_id) in RUN_FINISHED,
        timeout=30,
        every=0.05,
        what="the recovered run finishing",
    )
    status = run_status(store, run_id)
    if status != "succeeded":
        raise RuntimeError(f"the recovered run ended {status}")
    rescuer = _pid(second.worker)
    if rescuer == victim:
        raise RuntimeError("the killed worker's pid ran the second attempt")
    was_leader = leader_before is not None and leader.get(LEADER_KEY) != leader_before
    detail = "killed worker was the reconciler's leader" if was_leader else "leader survived"
    return second.started_at - killed_at, detail


def _pid(owner: str) -> int:
    # Runtime.owner is "host:pid:random".
    return int(owner.rsplit(":", 2)[1])


class _Workers:
    """`baton worker bench.actors` subprocesses, each in its own session; all killed on exit."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}
        self._spawned = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "OPENAI_"))}
        self.env.update(
            BATON_HOME=str(sandbox.directory / "home"),
            BATON_REDIS_URL=sandbox.redis_url,
            BATON_DATABASE_URL=sandbox.database_url,
            BATON_LEASE_SECONDS=f"{LEASE_SECONDS:g}",
            BATON_RECONCILE_INTERVAL_SECONDS=f"{RECONCILE_SECONDS:g}",
            PYTHONPATH=str(REPO),
        )

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *_: Any) -> None:
        for pid, process in list(self.processes.items()):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
        for pid, process in list(self.processes.items()):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()

    def spawn(self, ready_timeout: float = 60.0) -> int:
        self._spawned += 1
        log = self.sandbox.directory / f"worker-{self._spawned}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "baton", "worker", "-t", str(THREADS), "bench.actors"],
                cwd=REPO,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                start_new_session=True,
            )
        self.processes[process.pid] = process
        self.logs[process.pid] = log
        deadline = time.monotonic() + ready_timeout
        while b" running " not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`baton worker` did not start:\n{tail}")
            time.sleep(0.05)
        return process.pid

    def kill(self, pid: int) -> None:
        """SIGKILL the worker's whole session (it runs in-process with `-p 1`)."""
        os.killpg(pid, signal.SIGKILL)
        self.processes.pop(pid).wait(timeout=10)
