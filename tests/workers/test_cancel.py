"""Cancelling a running run: the step in flight finishes but its result is not committed,
nothing further runs, and the run ends canceled."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from store import Store, run_detail
from tests.actors import effects
from tests.actors.chaos import ChaosStep
from tests.conftest import baton, wait_for_run
from workers import Runtime

MODULE = "tests.actors.chaos"


@pytest.mark.slow
def test_canceling_a_running_run_drops_the_in_flight_result_and_runs_nothing_more(
    store: Store,
    baton_env: dict[str, str],
    make_runtime: Callable[..., Runtime],
    worker_processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # Given a run of 10 steps whose third step is in flight (it holds until a gate opens)
    worker_processes(MODULE)
    ledger = effects.create(tmp_path / "effects.db")
    gate = tmp_path / "gate"
    started = ChaosStep(effects=ledger, steps=10, pause=0.1, hold_at=3, gate=str(gate))
    run_id = make_runtime().start_run(started).run_id
    deadline = time.monotonic() + 30
    while f"{run_id}/3" not in effects.calls_per_label(ledger):
        assert time.monotonic() < deadline, "step 3 never started"
        time.sleep(0.05)
    # When it is canceled through the CLI, and the in-flight step then returns
    canceled = baton(baton_env, "cancel", run_id, "--reason", "customer withdrew the order")
    assert canceled.returncode == 0, canceled.stderr
    assert wait_for_run(store, run_id, timeout=1) == "canceled"
    gate.touch()
    # Then the in-flight step ends canceled: its result (step 4's event) was not committed
    deadline = time.monotonic() + 10
    while len([s for s in run_detail(store, run_id)["steps"] if s["finished_at"]]) < 3:
        assert time.monotonic() < deadline, "the third step never finished"
        time.sleep(0.05)
    detail = run_detail(store, run_id)
    positions = {e["id"]: e["data"].get("i") for e in detail["events"]}
    by_position = {positions[s["event_id"]]: s for s in detail["steps"]}
    assert sorted(by_position) == [1, 2, 3]
    assert [by_position[i]["state"] for i in (1, 2, 3)] == ["succeeded", "succeeded", "canceled"]
    assert by_position[3]["attempt_history"][-1]["outcome"] == "canceled"
    assert not [e for e in detail["events"] if e["cause_step_id"] == by_position[3]["id"]]
    # And nothing further runs
    time.sleep(1.0)
    assert set(effects.calls_per_label(ledger)) == {f"{run_id}/{i}" for i in (1, 2, 3)}
    assert len(run_detail(store, run_id)["steps"]) == 3
    # And the run is canceled, with the reason in its error and its log
    assert detail["run"]["status"] == "canceled"
    assert "customer withdrew the order" in detail["run"]["error"]
    [event] = [e for e in detail["events"] if e["type"] == "baton.run.canceled"]
    assert event["data"]["reason"] == "customer withdrew the order"
