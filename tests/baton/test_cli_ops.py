"""The operator's commands through the real `baton` CLI, on a real Valkey and store with real
worker processes: replay in place, fork, recorded fork, bulk replay, cancel, runs diff."""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from store import Store, operation_detail, read_memory, run_status, short_id, statuses_of
from store._tables import operations, steps
from tests.actors import effects
from tests.actors.ops import OpsAsk, OpsPay, OpsSlow, OpsStart
from tests.conftest import baton, wait_for_run
from workers import Runtime, Worker
from workers.agents.offline_model import OfflineModelConfig, OfflineModelHandle, start_in_thread

OPS = "tests.actors.ops"
USER = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    return effects.create(tmp_path / "ledger.db")


@pytest.fixture
def model() -> Iterator[OfflineModelHandle]:
    handle = start_in_thread(OfflineModelConfig())
    yield handle
    handle.stop()


def calls_in(ledger: str, run_id: str) -> dict[str, int]:
    return {
        label.split("/", 1)[1]: n
        for label, n in effects.calls_per_label(ledger).items()
        if label.startswith(f"{run_id}/")
    }


def step_of(store: Store, run_id: str, actor: str, nth: int = 0) -> str:
    with store.read() as connection:
        found = connection.execute(
            select(steps.c.id)
            .where(steps.c.run_id == run_id, steps.c.actor == actor)
            .order_by(steps.c.created_at, steps.c.id)
        ).scalars()
        return list(found)[nth]


def operations_of(store: Store) -> list[Any]:
    with store.read() as connection:
        return list(connection.execute(select(operations).order_by(operations.c.created_at)))


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_replay_in_place_reruns_the_failed_step_only_and_records_the_operation(
    baton_env: dict[str, str],
    worker_processes: Callable[..., Any],
    store: Store,
    ledger: str,
    tmp_path: Path,
) -> None:
    # Given a worker, and a run whose step 2 fails until a flag is set
    worker_processes(OPS)
    flag = tmp_path / "flag"
    data = json.dumps({"ledger": ledger, "flag": str(flag)})
    started = baton(baton_env, "run", "t_ops.start", "-m", OPS, "--data", data, "--wait", "--json")
    assert started.returncode == 1, started.stderr
    run_id = json.loads(started.stdout)["run"]["id"]
    assert run_status(store, run_id) == "failed"
    # When the flag is set and an operator replays the run with a reason
    flag.touch()
    replayed = ok(baton(baton_env, "replay", run_id, "--reason", "flag set", "--wait", "--json"))
    # Then it succeeds, and the steps before the failed one were not run again
    assert replayed["run"]["status"] == "succeeded"
    assert calls_in(ledger, run_id) == {"begin": 1, "step1": 1, "step2": 2, "step3": 1}
    # And the replay is an operation: who, why, what it re-ran
    [recorded] = operations_of(store)
    assert (recorded.kind, recorded.actor, recorded.reason, recorded.status) == (
        "replay",
        USER,
        "flag set",
        "succeeded",
    )
    assert recorded.outcome["replayed_steps"] == [
        step_of(store, run_id, "tests.actors.ops.ops_step", 1)
    ]


def test_fork_from_a_middle_step_with_an_edit_then_diff(
    baton_env: dict[str, str],
    worker_processes: Callable[..., Any],
    store: Store,
    ledger: str,
    tmp_path: Path,
) -> None:
    # Given a run that succeeded
    worker_processes(OPS)
    flag = tmp_path / "flag"
    flag.touch()
    data = json.dumps({"ledger": ledger, "flag": str(flag)})
    run_id = ok(baton(baton_env, "run", "t_ops.start", "--data", data, "--wait", "--json"))["run"][
        "id"
    ]
    step2 = step_of(store, run_id, "tests.actors.ops.ops_step", 1)
    # When it is forked from step 2 (by the end of its id, as listings show ids) with an
    # edited input
    forked = ok(
        baton(
            baton_env,
            "replay",
            run_id,
            "--from",
            step2[-10:],
            "--edit",
            '{"add": 100}',
            "--reason",
            "what if step 2 added 100",
            "--wait",
            "--json",
        )
    )
    # Then a new run succeeded with the edit, its prefix not run again, the original as it was
    fork = forked["run_id"]
    assert forked["status"] == "succeeded" and forked["parent_run_id"] == run_id
    assert read_memory(store, fork, "total") == (True, 104)
    assert read_memory(store, run_id, "total") == (True, 6)
    assert calls_in(ledger, fork) == {"step2": 1, "step3": 1}
    # And the divergence is reported, and kept with the operation
    assert forked["divergence"]["what"] == "input"
    assert forked["divergence"]["original_step_id"] == step2
    recorded = operation_detail(store, forked["operation_id"])
    assert recorded["kind"] == "fork" and recorded["outcome"]["divergence"]["what"] == "input"
    # When the two runs are compared
    diff = ok(baton(baton_env, "runs", "diff", run_id, fork, "--json"))
    # Then they line up step by step: the edited event is step 1's output and step 2's input,
    # and step 3's output (the total) differs too
    assert [row["actor"].rsplit(".", 1)[1] for row in diff["steps"]] == [
        "ops_begin",
        "ops_step",
        "ops_step",
        "ops_step",
    ]
    assert [row["differences"] for row in diff["steps"]][:2] == [[], ["output"]]
    assert "input" in diff["steps"][2]["differences"]
    assert diff["steps"][3]["b"]["output"] == [{"type": "t_ops.done", "data": {"total": 104}}]
    assert diff["divergence"]["original_step_id"] == step2
    # And the table says so to a person
    table = baton(baton_env, "runs", "diff", run_id, fork, "--changed")
    assert table.returncode == 0, table.stderr
    assert "step(s) differ" in table.stdout and "diverged at step" in table.stdout


def test_recorded_fork_reports_no_divergence_and_asks_the_model_nothing(
    baton_env: dict[str, str],
    start_worker: Callable[..., Worker],
    store: Store,
    model: OfflineModelHandle,
    ledger: str,
) -> None:
    # Given an agent run answered by the offline model (the worker runs in this process)
    worker = start_worker(model_base_url=model.base_url, model_api_key="offline")
    run_id = worker.runtime.start_run(OpsAsk(ledger=ledger, question="Disk usage?")).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    model.reset_stats()
    first = step_of(store, run_id, "tests.actors.ops.ops_ask")
    # When an operator forks it, recorded, from its first step
    result = baton(baton_env, "replay", run_id, "--from", first, "--recorded", "--reason", "check")
    # Then the fork succeeds with no request to the model, and no divergence is reported
    assert result.returncode == 0, result.stderr
    assert "no divergence" in result.stdout
    assert model.stats().requests == 0
    [recorded] = operations_of(store)
    assert recorded.parameters["recorded"] is True
    assert recorded.outcome["divergence"] is None
    assert recorded.outcome["status"] == "succeeded"


def test_bulk_replay_of_fifty_failed_runs(
    baton_env: dict[str, str],
    worker_processes: Callable[..., Any],
    make_runtime: Callable[..., Runtime],
    store: Store,
    ledger: str,
    tmp_path: Path,
) -> None:
    # Given fifty runs failed at step 2, and one that succeeded
    worker_processes(OPS, threads=8)
    flag = tmp_path / "flag"
    runtime = make_runtime()
    failed = [runtime.start_run(OpsStart(ledger=ledger, flag=str(flag))).run_id for _ in range(50)]
    deadline = time.monotonic() + 60
    while set(statuses_of(store, failed).values()) != {"failed"}:
        assert time.monotonic() < deadline, statuses_of(store, failed)
        time.sleep(0.1)
    # When an operator asks for a dry run
    select = ["--status", "failed", "--actor", "tests.actors.ops.ops_step", "--since", "1h"]
    dry = ok(baton(baton_env, "replay", *select, "--error", "FlakyDown", "--dry-run", "--json"))
    # Then the count is right, a sample is shown, and nothing changed
    assert dry["count"] == 50 and len(dry["sample"]) == 10
    assert {row["error_type"] for row in dry["sample"]} == {"FlakyDown"}
    assert operations_of(store) == []
    # And the table view says the same
    table = baton(baton_env, "replay", *select, "--dry-run")
    assert table.returncode == 0 and "50 run(s) would be replayed" in table.stdout
    # When the operator acts without -y, it is refused and says what to add
    refused = baton(baton_env, "replay", *select, "--reason", "flag set")
    assert refused.returncode == 2
    assert "-y" in refused.stderr and "--dry-run" in refused.stderr
    # When the flag is set and the operator confirms
    flag.touch()
    done = ok(baton(baton_env, "replay", *select, "--reason", "flag set", "-y", "--wait", "--json"))
    # Then all fifty are replayed and succeed
    assert (done["status"], done["count"], done["changed"]) == ("succeeded", 50, 50)
    assert done["final"] == {"succeeded": 50}
    assert set(statuses_of(store, failed).values()) == {"succeeded"}
    # And the operation records every run's outcome
    [recorded] = operations_of(store)
    assert (recorded.kind, recorded.actor, recorded.reason) == ("bulk_replay", USER, "flag set")
    assert recorded.parameters["actor"] == "tests.actors.ops.ops_step"
    assert sorted(r["run_id"] for r in recorded.outcome["runs"]) == sorted(failed)
    assert {r["outcome"] for r in recorded.outcome["runs"]} == {"replayed"}


def test_cancel_one_run_drops_its_in_flight_step_and_is_recorded(
    baton_env: dict[str, str],
    worker_processes: Callable[..., Any],
    make_runtime: Callable[..., Runtime],
    store: Store,
    ledger: str,
) -> None:
    # Given a run whose only step is in flight for a while
    worker_processes(OPS)
    # (long enough for the CLI to start and cancel it on a slow machine)
    run_id = make_runtime().start_run(OpsSlow(ledger=ledger, pause=6.0)).run_id
    deadline = time.monotonic() + 30
    while calls_in(ledger, run_id) != {"slow": 1}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # When an operator cancels it
    result = baton(baton_env, "cancel", run_id[:12], "--reason", "no longer needed", "--json")
    # Then the run is canceled, and the step's result is not committed when it ends
    assert ok(result)["status"] == "canceled"
    deadline = time.monotonic() + 30
    while effects.effects(ledger) == {}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    assert run_status(store, run_id) == "canceled"
    with store.read() as connection:
        state = connection.execute(select(steps.c.state).where(steps.c.run_id == run_id)).scalar()
    assert state == "canceled"
    # And the cancel is an operation
    [recorded] = operations_of(store)
    assert (recorded.kind, recorded.actor, recorded.reason) == ("cancel", USER, "no longer needed")


def test_cancel_by_filter_needs_a_dry_run_or_yes(
    baton_env: dict[str, str],
    make_runtime: Callable[..., Runtime],
    store: Store,
    ledger: str,
) -> None:
    # Given three live runs (no worker: they stay running)
    runtime = make_runtime()
    live = [runtime.start_run(OpsSlow(ledger=ledger, pause=0.0)).run_id for _ in range(3)]
    # When an operator asks for a dry run, then acts without -y, then with it
    dry = ok(baton(baton_env, "cancel", "--status", "running", "--dry-run", "--json"))
    refused = baton(baton_env, "cancel", "--status", "running", "--reason", "drain")
    done = ok(
        baton(baton_env, "cancel", "--status", "running", "--reason", "drain", "-y", "--json")
    )
    # Then the dry run counts three, the bare one is refused, and -y cancels them all
    assert dry["count"] == 3
    assert refused.returncode == 2 and "-y" in refused.stderr
    assert (done["status"], done["changed"]) == ("succeeded", 3)
    assert set(statuses_of(store, live).values()) == {"canceled"}
    [recorded] = operations_of(store)
    assert recorded.kind == "bulk_cancel" and recorded.outcome["count"] == 3


@pytest.mark.slow
def test_a_step_parked_as_outcome_unknown_is_replayed_in_place_with_the_operators_word(
    baton_env: dict[str, str],
    worker_processes: Callable[..., Any],
    make_runtime: Callable[..., Runtime],
    store: Store,
    model: OfflineModelHandle,
    ledger: str,
) -> None:
    # Given a worker killed inside a non-idempotent tool call (a charge)
    env = {**baton_env, "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "offline"}
    first = worker_processes(OPS, env=env)
    run_id = make_runtime().start_run(OpsPay(ledger=ledger, pause=30.0)).run_id
    deadline = time.monotonic() + 30
    while calls_in(ledger, run_id) != {"charge": 1}:
        assert time.monotonic() < deadline, "the charge did not start"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    # When another worker takes the step over, it does not charge again: the step is parked
    # as OutcomeUnknown for an operator, and the run fails saying so
    worker_processes(OPS, env=env)
    assert wait_for_run(store, run_id, timeout=45) == "failed"
    charge = step_of(store, run_id, "baton.agent.tool_call")
    with store.read() as connection:
        parked = connection.execute(select(steps).where(steps.c.id == charge)).one()
    assert (parked.state, parked.error_type) == ("failed", "OutcomeUnknown")
    assert calls_in(ledger, run_id) == {"charge": 1}
    # When the operator has checked the outside world and replays that step
    replayed = baton(
        baton_env,
        "replay",
        run_id,
        "--step",
        short_id(charge),
        "--reason",
        "no charge at the bank",
        "--wait",
        "--json",
    )
    # Then the charge is made again, once, and the run succeeds; nothing else re-ran
    assert ok(replayed)["run"]["status"] == "succeeded"
    assert calls_in(ledger, run_id) == {"charge": 2}
    assert model.stats().requests == 2
    [recorded] = operations_of(store)
    assert recorded.outcome["replayed_steps"] == [charge]
    assert recorded.parameters["step_id"] == charge


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        pytest.param(
            ["replay", "r1", "--reason", "x", "--step", "s", "--from", "t"],
            "choose one",
            id="step-and-from",
        ),
        pytest.param(
            ["replay", "r1", "--reason", "x", "--edit", "{}"], "--from STEP", id="edit-without-from"
        ),
        pytest.param(
            ["replay", "r1", "--reason", "x", "--status", "failed"], "not both", id="run-and-status"
        ),
        pytest.param(
            ["replay", "--status", "running", "--reason", "x", "-y"],
            "--status failed",
            id="bulk-replay-of-running",
        ),
        pytest.param(["replay", "r1"], "--reason", id="no-reason"),
        pytest.param(["replay", "--status", "failed", "-y"], "--reason", id="bulk-no-reason"),
        pytest.param(
            ["cancel", "--reason", "x", "-y"],
            "--status running or waiting",
            id="cancel-no-selection",
        ),
    ],
)
def test_operator_commands_refuse_contradictory_options_with_exit_2(
    baton_env: dict[str, str], store: Store, arguments: list[str], needle: str
) -> None:
    result = baton(baton_env, *arguments)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr
    assert operations_of(store) == []
