"""POST /runs/{id}/replay forks too: a new run from a step, its input edited, recorded as an
operation by "api:<token name>"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from store import Store, operation_detail, read_memory
from store._tables import steps
from tests.actors import effects
from tests.actors.ops import OpsStart
from tests.conftest import wait_for_run
from tests.gateway.conftest import Gateway
from workers import Worker


def test_replay_from_a_step_forks_a_new_run_with_the_edit(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    # Given a run that succeeded: steps 1-3 add 1 + 2 + 3
    worker = start_worker()
    flag = tmp_path / "flag"
    flag.touch()
    ledger = effects.create(tmp_path / "ledger.db")
    run_id = worker.runtime.start_run(OpsStart(ledger=ledger, flag=str(flag))).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    with store.read() as connection:
        step3 = list(
            connection.execute(
                select(steps.c.id)
                .where(steps.c.run_id == run_id, steps.c.actor == "tests.actors.ops.ops_step")
                .order_by(steps.c.created_at)
            ).scalars()
        )[2]
    with gateway.client() as client:
        # A fork's options without from_step_id are refused, naming the fix
        refused = client.post(f"/runs/{run_id}/replay", json={"reason": "x", "recorded": True})
        assert refused.status_code == 422 and "from_step_id" in refused.text
        # When it is forked from step 3 with step 3 adding 30
        answer = client.post(
            f"/runs/{run_id}/replay",
            json={"reason": "what if", "from_step_id": step3, "edit": {"add": 30}},
        )
    # Then a new run re-runs step 3 only and ends with 1 + 2 + 30
    assert answer.status_code == 202, answer.text
    forked = answer.json()
    assert forked["run_id"] == run_id and len(forked["replayed_steps"]) == 1
    assert wait_for_run(store, forked["fork_run_id"]) == "succeeded"
    assert read_memory(store, forked["fork_run_id"], "total") == (True, 33)
    assert read_memory(store, run_id, "total") == (True, 6)
    # And the operation says who asked: the API's token
    recorded = operation_detail(store, forked["operation_id"])
    assert (recorded["kind"], recorded["actor"], recorded["reason"]) == (
        "fork",
        "api:default",
        "what if",
    )
