"""The chain example end to end on a real Valkey and store, in-process and through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from examples.chain import Start
from store import Store, read_memory, run_detail
from tests.conftest import baton, wait_for_run
from workers import Worker


def test_chain_runs_to_completion_with_memory(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker on the chain example
    worker = start_worker()
    # When a run starts with n=5
    run_id = worker.runtime.start_run(Start(n=5)).run_id
    # Then it succeeds with five ticks, a done event carrying 15, and memory total = 15
    assert wait_for_run(store, run_id) == "succeeded"
    detail = run_detail(store, run_id)
    types = [e["type"] for e in detail["events"] if not e["type"].startswith("baton.")]
    assert types == ["chain.start"] + ["chain.tick"] * 5 + ["chain.done"]
    assert detail["events"][-2]["data"] == {"total": 15} or any(
        e["data"] == {"total": 15} for e in detail["events"] if e["type"] == "chain.done"
    )
    assert read_memory(store, run_id, "total") == (True, 15)
    assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in detail["steps"])


def test_cli_run_wait_json_then_show(
    baton_env: dict[str, str], worker_processes: Callable[..., Any]
) -> None:
    # Given a `baton worker examples.chain` process
    worker_processes("examples.chain")
    # When `baton run chain.start --data '{"n": 5}' --wait --json` runs (no module named)
    result = baton(baton_env, "run", "chain.start", "--data", '{"n": 5}', "--wait", "--json")
    # Then it prints the succeeded run
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["run"]["status"] == "succeeded"
    # And `baton runs show RUN --json` has the events, timed steps and memory
    show = baton(baton_env, "runs", "show", shown["run"]["id"], "--json")
    assert show.returncode == 0, show.stderr
    detail = json.loads(show.stdout)
    ticks = [e for e in detail["events"] if e["type"] == "chain.tick"]
    done = [e for e in detail["events"] if e["type"] == "chain.done"]
    assert len(ticks) == 5 and done[0]["data"] == {"total": 15}
    assert detail["memory"] == {"total": 15}
    assert all(s["finished_at"] >= s["started_at"] for s in detail["steps"])
