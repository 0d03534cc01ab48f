"""A handler stuck where no time limit reaches it loses its lease instead of hanging its run."""

from __future__ import annotations

import time
from collections.abc import Callable

from events import Event
from store import Store, run_detail
from tests.conftest import wait_for_run
from workers import Context, Worker, actor


class Stuck(Event, type="t_limits.stuck"):
    seconds: float


@actor(on=Stuck, timeout="1s", retries=2)
def block_in_c_code(event: Stuck, ctx: Context) -> None:
    if ctx.attempt == 1:
        # time.sleep is one C call: Dramatiq's time limit can only interrupt it once it returns.
        time.sleep(event.seconds)


def test_a_step_stuck_past_its_time_limit_lets_its_lease_go_and_runs_again(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker (lease 2 s) and a step whose first attempt blocks for 12 s, far past its
    # 1 s time limit, in a call no time limit can interrupt
    worker = start_worker(threads=2)
    started = time.monotonic()
    run_id = worker.runtime.start_run(Stuck(seconds=12)).run_id
    # When the worker stops renewing the stuck attempt's lease (limit + 2 leases = 5 s)
    status = wait_for_run(store, run_id, timeout=30)
    took = time.monotonic() - started
    # Then the step ran again and the run succeeded well before the stuck call returned
    assert status == "succeeded"
    assert took < 11, f"the run waited for the stuck attempt ({took:.1f} s)"
    [step] = run_detail(store, run_id)["steps"]
    outcomes = [a["outcome"] for a in step["attempt_history"]]
    assert outcomes[0] == "lost" and outcomes[-1] == "succeeded", outcomes
