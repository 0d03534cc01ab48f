"""A handler that raises: retried with growing backoff, then the step and its run fail with
the error recorded; once the cause is fixed, `baton replay` finishes the run without
re-running what already succeeded."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from store import Store, run_detail
from tests.actors import effects
from tests.actors.flaky import OrderPlaced
from tests.conftest import baton, wait_for_run
from workers import Runtime

MODULE = "tests.actors.flaky"
MIN_BACKOFF_MS = 400


@pytest.mark.slow
def test_a_failing_step_backs_off_fails_the_run_and_replay_finishes_it(
    store: Store,
    baton_env: dict[str, str],
    make_runtime: Callable[..., Runtime],
    worker_processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # Given a worker whose retries back off from 400 ms, and a payment service that is down
    env = {
        **baton_env,
        "BATON_MIN_BACKOFF_MS": str(MIN_BACKOFF_MS),
        "BATON_MAX_BACKOFF_MS": "10000",
    }
    worker_processes(MODULE, env=env)
    ledger = effects.create(tmp_path / "effects.db")
    outage = tmp_path / "payment-outage"
    outage.touch()
    # When an order is placed
    run_id = make_runtime().start_run(OrderPlaced(ledger=ledger, outage=str(outage))).run_id
    # Then the run fails
    assert wait_for_run(store, run_id, timeout=30) == "failed"
    detail = run_detail(store, run_id)
    charge = next(s for s in detail["steps"] if s["actor"].endswith("take_payment"))
    # And the charge step was tried 1 + 3 times, each failure recorded with its traceback
    history = charge["attempt_history"]
    assert (charge["state"], charge["attempts"], len(history)) == ("failed", 4, 4)
    assert charge["error_type"] == "PaymentDown"
    assert charge["error_message"] == "payment service unavailable (attempt 4)"
    for attempt in history:
        assert (attempt["outcome"], attempt["error_type"]) == ("failed", "PaymentDown")
        assert "in take_payment" in attempt["traceback"]
        assert "PaymentDown: payment service unavailable" in attempt["traceback"]
    # And the retries backed off exponentially: each wait at least half its nominal
    # 400 ms * 2^k (the jitter), and the last wait longer than the first
    starts = [attempt["started_at"] for attempt in history]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    for k, gap in enumerate(gaps):
        assert gap >= MIN_BACKOFF_MS * 2**k / 2 / 1000 - 0.06, gaps
    assert gaps[-1] > gaps[0], gaps
    # And the run says which step failed and why, in its error and in its log
    assert "take_payment failed: PaymentDown: payment service unavailable" in detail["run"]["error"]
    [failed] = [e for e in detail["events"] if e["type"] == "baton.run.failed"]
    assert failed["data"]["error_type"] == "PaymentDown"
    assert failed["data"]["step_id"] == charge["id"]
    # And nothing after the failed step ran
    assert not any(s["actor"].endswith("ship") for s in detail["steps"])
    # When the outage is over and the run is replayed through the CLI
    outage.unlink()
    replay = baton(env, "replay", run_id, "--reason", "payment service restored", "--wait")
    # Then the run succeeds
    assert replay.returncode == 0, replay.stderr
    assert run_detail(store, run_id)["run"]["status"] == "succeeded"
    # And the steps that had succeeded were not run again; charge ran once more and shipped
    assert effects.calls_per_label(ledger) == {"reserve": 1, "charge": 5, "ship": 1}
    assert sorted(effects.effects(ledger).values()) == ["charge", "reserve", "ship"]
    steps = {s["actor"].rsplit(".", 1)[-1]: s for s in run_detail(store, run_id)["steps"]}
    assert {name: (s["state"], s["attempts"]) for name, s in steps.items()} == {
        "reserve_stock": ("succeeded", 1),
        "take_payment": ("succeeded", 5),
        "ship": ("succeeded", 1),
    }
    # And the replay and its reason are in the run's log
    replayed = [e for e in run_detail(store, run_id)["events"] if e["type"] == "baton.run.replayed"]
    assert [e["data"]["reason"] for e in replayed] == ["payment service restored"]
