"""A `baton worker` SIGKILLed in the middle of an agent's tool call or model call: another
worker finishes the run, no effect is applied twice and no answered model call is re-asked."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from store import Store, effects_of_run, run_detail, tool_calls_of
from tests.actors.agents_crash import CrashStart
from tests.conftest import wait_for_run
from workers import Runtime
from workers.agents.offline_model import OfflineModelHandle

MODULE = "tests.actors.agents_crash"
SpawnWorker = Callable[..., subprocess.Popen[bytes]]

pytestmark = pytest.mark.slow


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def steps_of(store: Store, run_id: str, actor: str) -> list[dict[str, Any]]:
    return [s for s in run_detail(store, run_id)["steps"] if s["actor"] == actor]


def test_a_worker_killed_during_a_tool_call(
    store: Store,
    make_runtime: Callable[..., Runtime],
    offline_model: Callable[..., OfflineModelHandle],
    model_env: Callable[[OfflineModelHandle], dict[str, str]],
    worker_processes: SpawnWorker,
    recorded_model_calls: Callable[[str], list[dict[str, Any]]],
) -> None:
    # Given a worker process whose agent's tool applies a keyed effect, then sleeps 3 s
    model = offline_model()
    env = model_env(model)
    first = worker_processes(MODULE, env=env)
    run_id = make_runtime().start_run(CrashStart(label="t-crash-tool", pause=3)).run_id
    wait_until(lambda: len(effects_of_run(store, run_id)) == 1, "the tool's effect")
    (tool_step,) = steps_of(store, run_id, "baton.agent.tool_call")
    assert tool_step["state"] == "running"

    # When the worker is SIGKILLed inside the tool call and another worker starts
    kill(first)
    worker_processes(MODULE, env=env)

    # Then the run completes
    assert wait_for_run(store, run_id, timeout=45) == "succeeded"
    # And the tool ran again (its idempotency key unchanged), but the effect exists once
    (call,) = tool_calls_of(store, run_id)
    assert call["state"] == "done" and call["attempt"] == 2
    assert call["result"] == "applied t-crash-tool (already done)"
    (effect,) = effects_of_run(store, run_id)
    assert effect["target"] == "t-crash-tool" and effect["payload"] == {"attempt": 1}
    # And the model call answered before the kill was not asked again: two model-call
    # steps, two requests at the model, each answered on its first attempt
    model_steps = steps_of(store, run_id, "baton.agent.model_call")
    assert len(model_steps) == 2
    assert model.stats().requests == 2
    assert [c["attempt"] for c in recorded_model_calls(run_id)] == [1, 1]


def test_a_worker_killed_during_a_model_call(
    store: Store,
    make_runtime: Callable[..., Runtime],
    offline_model: Callable[..., OfflineModelHandle],
    model_env: Callable[[OfflineModelHandle], dict[str, str]],
    worker_processes: SpawnWorker,
    recorded_model_calls: Callable[[str], list[dict[str, Any]]],
) -> None:
    # Given a model whose second answer (after the tool has run) takes 3 s
    model = offline_model()
    model.add_faults([{}, {"delay_seconds": 3}])
    env = model_env(model)
    first = worker_processes(MODULE, env=env)
    run_id = make_runtime().start_run(CrashStart(label="t-crash-model", pause=0)).run_id
    wait_until(
        lambda: model.stats().requests == 2 and model.stats().in_flight == 1,
        "the second model request",
    )
    assert len(effects_of_run(store, run_id)) == 1

    # When the worker is SIGKILLed while that request is in flight and another worker starts
    kill(first)
    worker_processes(MODULE, env=env)

    # Then the run completes
    assert wait_for_run(store, run_id, timeout=45) == "succeeded"
    # And the model saw one request per model-call step, plus only the one cut off by the
    # kill: the first call, answered and committed before it, was not made again
    model_steps = steps_of(store, run_id, "baton.agent.model_call")
    assert len(model_steps) == 2
    assert model.stats().requests == len(model_steps) + 1
    assert [s["attempts"] for s in model_steps] == [1, 2]
    assert [c["attempt"] for c in recorded_model_calls(run_id)] == [1, 2]
    # And the tool's effect is there once, from its only call
    (effect,) = effects_of_run(store, run_id)
    assert effect["target"] == "t-crash-model"
    (call,) = tool_calls_of(store, run_id)
    assert call["attempt"] == 1 and call["result"] == "applied t-crash-model"
