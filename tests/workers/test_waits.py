"""Waits and timers live in the store: both survive the worker that parked them being killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from store import Store, run_detail
from tests.actors.waits import RefundRequested, ReminderScheduled
from tests.conftest import baton, wait_for_run
from workers import Runtime

MODULE = "tests.actors.waits"
Spawn = Callable[..., subprocess.Popen[bytes]]


def kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def emitted(store: Store, run_id: str, type: str) -> dict[str, Any]:
    [found] = [e for e in run_detail(store, run_id)["events"] if e["type"] == type]
    return dict(found["data"])


@pytest.mark.slow
def test_a_wait_survives_a_worker_restart_and_resumes_on_a_signal_from_the_cli(
    store: Store,
    baton_env: dict[str, str],
    make_runtime: Callable[..., Runtime],
    worker_processes: Spawn,
) -> None:
    # Given a run parked on ctx.wait_for("approve")
    first = worker_processes(MODULE)
    run_id = make_runtime().start_run(RefundRequested(amount=120)).run_id
    assert wait_for_run(store, run_id, timeout=20, until=frozenset({"waiting"})) == "waiting"
    # When the worker that parked it is killed and another one started
    kill(first)
    second = worker_processes(MODULE)
    # And a misspelt signal is sent through the CLI
    misspelt = baton(baton_env, "signal", run_id, "aprove")
    # Then it exits 1 naming the open wait, and the run still waits
    assert misspelt.returncode == 1
    assert "'aprove'" in misspelt.stderr and "open waits: approve" in misspelt.stderr
    assert run_detail(store, run_id)["run"]["status"] == "waiting"
    # When the approval is signalled through the CLI, with data
    signalled = baton(baton_env, "signal", run_id, "approve", "--data", '{"by": "ops@example"}')
    assert signalled.returncode == 0, signalled.stderr
    assert "delivered to 1 waiting step" in signalled.stdout
    # Then the run resumes on the new worker and succeeds, with the signal's data
    assert wait_for_run(store, run_id, timeout=20) == "succeeded"
    assert emitted(store, run_id, "t_waits.refund_approved") == {
        "amount": 120,
        "approved_by": "ops@example",
        "worker_pid": second.pid,
    }
    # And its first attempt parked, its second ran after the signal
    [step] = run_detail(store, run_id)["steps"]
    assert [a["outcome"] for a in step["attempt_history"]] == ["waiting", "succeeded"]


@pytest.mark.slow
def test_a_timer_fires_after_a_worker_restart(
    store: Store, make_runtime: Callable[..., Runtime], worker_processes: Spawn
) -> None:
    # Given a run parked on ctx.sleep("2s")
    first = worker_processes(MODULE)
    started = time.time()
    run_id = make_runtime().start_run(ReminderScheduled(note="renew the certificate")).run_id
    assert wait_for_run(store, run_id, timeout=20, until=frozenset({"waiting"})) == "waiting"
    # When the worker is killed while the timer is pending, and another one started
    kill(first)
    second = worker_processes(MODULE)
    # Then the timer fires on the new worker, not before its 2 s were up, and the run succeeds
    assert wait_for_run(store, run_id, timeout=20) == "succeeded"
    sent = emitted(store, run_id, "t_waits.reminder_sent")
    assert sent["worker_pid"] == second.pid and sent["note"] == "renew the certificate"
    assert sent["sent_at"] - started >= 2.0
    [wait] = run_detail(store, run_id)["waits"]
    assert (wait["name"], wait["state"]) == ("timer:sleep", "timed_out")
