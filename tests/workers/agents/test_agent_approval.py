"""A tool that needs approval parks its run; the wait outlives the worker; `baton signal`
approves (the tool runs) or rejects (the model is told why, the tool never runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from store import Store, conversation_of, effects_of_run, run_detail, run_status, tool_calls_of
from tests.actors.agents_approval import ApprovalStart
from tests.conftest import baton, wait_for_run
from workers import Runtime
from workers.agents.offline_model import OfflineModelHandle

MODULE = "tests.actors.agents_approval"

pytestmark = pytest.mark.slow


def tool_answer(store: Store, run_id: str) -> str:
    (answer,) = [m for m in conversation_of(store, run_id) if m["role"] == "tool"]
    return str(answer["content"])


def test_approval_parks_the_run_across_a_restart_until_an_operator_decides(
    store: Store,
    make_runtime: Callable[..., Runtime],
    offline_model: Callable[..., OfflineModelHandle],
    model_env: Callable[[OfflineModelHandle], dict[str, str]],
    worker_processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    # Given a worker process and two runs of an agent whose deploy tool needs approval
    model = offline_model()
    env = model_env(model)
    first = worker_processes(MODULE, env=env)
    runtime = make_runtime()
    approved = runtime.start_run(ApprovalStart(target="t-staging")).run_id
    rejected = runtime.start_run(ApprovalStart(target="t-production")).run_id

    # Then both park, waiting for approve or reject, before the tool runs
    for run_id in (approved, rejected):
        assert wait_for_run(store, run_id, until=frozenset({"waiting"})) == "waiting"
        waits = run_detail(store, run_id)["waits"]
        assert sorted((w["name"], w["state"]) for w in waits) == [
            ("approve", "open"),
            ("reject", "open"),
        ]

    # When the worker is SIGKILLed and another one starts
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    worker_processes(MODULE, env=env)
    time.sleep(1.5)  # several reconciler rounds: nothing may wake a parked step

    # Then the runs are still waiting and nothing was deployed
    assert [run_status(store, r) for r in (approved, rejected)] == ["waiting", "waiting"]
    assert effects_of_run(store, approved) == effects_of_run(store, rejected) == []

    # When an operator approves one run and rejects the other with a reason, from the CLI
    approve = baton(env, "signal", approved, "approve")
    reject = baton(env, "signal", rejected, "reject", "--data", '{"reason": "no"}')
    assert approve.returncode == 0, approve.stderr
    assert reject.returncode == 0, reject.stderr
    assert "delivered to 1 waiting step(s)" in approve.stdout

    # Then the approved run deployed once and told the model so
    assert wait_for_run(store, approved) == "succeeded"
    (effect,) = effects_of_run(store, approved)
    assert effect["target"] == "t-staging"
    assert tool_answer(store, approved) == "deployed to t-staging"
    # And the rejected run never called the tool; the model got the rejection as its answer
    assert wait_for_run(store, rejected) == "succeeded"
    assert effects_of_run(store, rejected) == []
    assert tool_calls_of(store, rejected) == []
    assert tool_answer(store, rejected) == "rejected by an operator: no"
    (loop,) = run_detail(store, rejected)["agents"]
    assert "rejected by an operator: no" in loop["output"]
    # And each run asked the model twice: before the tool, and after its answer
    assert model.stats().requests == 4
