"""O(1) per step (DESIGN.md invariant 8): the model-call step of turn 200 of a conversation
issues the same statements, writes the same rows and does the same database work as turn 20."""

from __future__ import annotations

import contextvars
import functools
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event

from events import Event
from store import Store, run_detail
from tests.conftest import wait_for_run
from workers import Agent, Context, Worker, _runtime, actor, tool
from workers._tracing import current_step_id
from workers.agents.offline_model import OfflineModelHandle

EARLY_TURN = 20
LATE_TURN = 200


@tool(idempotent=True)
def t_agents_growth_tick() -> str:
    """Advance the counter by one."""
    return "ticked"


# `tool_choice: required` makes the offline model call the tool on every turn, so the loop
# runs until max_steps stops it.
long_talker = Agent(
    name="t_agents_growth",
    model="gpt-4.1-mini",
    instructions="Keep ticking.",
    tools=[t_agents_growth_tick],
    model_settings={"tool_choice": "required"},
    max_steps=LATE_TURN + 2,
    # Two messages a turn: by turn 20 the window is full, and stays that size.
    context_window=20,
)


class GrowthStart(Event, type="t_agents_growth.start"):
    pass


@actor(on=GrowthStart)
def t_agents_growth_start(event: GrowthStart, ctx: Context) -> Event:
    return long_talker.start(ctx, "Tick until you are stopped.")


# -- measuring what one step does to the store ------------------------------------------------

# A step's work is what runs while its attempt does (current_step_id): its handler and its
# commit, which claims the steps it makes ready for this worker and reads what they need.
# A step delivered from Redis is claimed before its attempt begins: that claim, and what
# its preparer reads, count as the step's work too.
_TRANSACTION_CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK")
_claiming: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "t_agents_growth_claiming", default=None
)


def _measured_step() -> str | None:
    return current_step_id() or _claiming.get()


@dataclass
class Work:
    statements: int = 0
    rows_written: int = 0
    # SQLite virtual-machine instructions, in tens: grows with every row a query scans.
    vm_steps: int = 0
    # Claimed from a message Redis delivered (not taken by the commit that made it ready).
    delivered: bool = False


@pytest.fixture
def work_per_step(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Work]]:
    """What every step did to the store, by step id, counted on both of the store's engines."""
    work: dict[str, Work] = defaultdict(Work)
    claim = _runtime.claim_step

    @functools.wraps(claim)
    def claim_measured(store: Store, step_id: str, *args: Any, **kwargs: Any) -> Any:
        work[step_id].delivered = True
        token = _claiming.set(step_id)
        try:
            return claim(store, step_id, *args, **kwargs)
        finally:
            _claiming.reset(token)

    monkeypatch.setattr(_runtime, "claim_step", claim_measured)

    def on_connect(connection: sqlite3.Connection, _record: Any) -> None:
        def progress() -> int:
            step = _measured_step()
            if step is not None:
                work[step].vm_steps += 1
            return 0

        connection.set_progress_handler(progress, 10)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        step = _measured_step()
        # Not BEGIN or the writer's savepoints: which of those a write takes depends on the
        # other threads' writes its commit is grouped with, not on the step's own work.
        if step is not None and not statement.startswith(_TRANSACTION_CONTROL):
            work[step].statements += 1

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        step = _measured_step()
        if step is not None and cursor.rowcount > 0:
            work[step].rows_written += cursor.rowcount

    engines = {store.engine, store.read_engine}
    for engine in engines:
        if store.dialect == "sqlite":
            event.listen(engine, "connect", on_connect)
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        engine.dispose()  # connections opened from now on get the progress handler
    yield work
    for engine in engines:
        if store.dialect == "sqlite":
            event.remove(engine, "connect", on_connect)
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


@pytest.mark.slow
@pytest.mark.parametrize(
    "delivered",
    [False, True],
    ids=["claimed by the commit that made them ready", "claimed from Redis deliveries"],
)
def test_turn_200_of_a_conversation_costs_what_turn_20_costs(
    delivered: bool,
    store: Store,
    work_per_step: dict[str, Work],
    offline_model: Callable[..., OfflineModelHandle],
    agent_worker: Callable[..., Worker],
    recorded_model_calls: Callable[[str], list[dict[str, Any]]],
) -> None:
    # Given a worker whose steps are measured, and an agent the model keeps calling a tool
    # for; its loop's steps are either taken by the commit that makes them ready (the
    # worker's own event loop has room) or, as for a worker without, each delivered by Redis
    # and claimed then
    worker = agent_worker(offline_model())
    worker.runtime.runs_next_steps = not delivered

    # When its loop runs past turn 200 (max_steps ends it)
    run_id = worker.runtime.start_run(GrowthStart()).run_id
    assert wait_for_run(store, run_id, timeout=100) == "failed"
    assert f"max_steps={LATE_TURN + 2}" in str(run_detail(store, run_id)["run"]["error"])

    # Then the model-call step of turn 200 ran as many statements and wrote as many rows as
    # the one of turn 20, with about as much database work, though the conversation it
    # continues is ten times longer
    steps = run_detail(store, run_id)["steps"]
    model_steps = [s["id"] for s in steps if s["actor"] == "baton.agent.model_call"]
    assert len(model_steps) == LATE_TURN + 3
    early = work_per_step[model_steps[EARLY_TURN - 1]]
    late = work_per_step[model_steps[LATE_TURN - 1]]
    assert early.delivered == late.delivered == delivered
    assert early.statements > 0 and early.rows_written > 0
    assert late.statements == early.statements
    assert late.rows_written == early.rows_written
    assert late.vm_steps <= early.vm_steps * 1.3, (early, late)
    # And so did the tool-call steps of those turns (one call a turn: no join step)
    ids = [s["id"] for s in steps if s["actor"] == "baton.agent.tool_call"]
    assert not [s for s in steps if s["actor"] == "baton.agent.tools_joined"]
    early, late = work_per_step[ids[EARLY_TURN - 1]], work_per_step[ids[LATE_TURN - 1]]
    assert early.delivered == late.delivered == delivered
    assert late.statements == early.statements > 0
    assert late.rows_written == early.rows_written
    assert late.vm_steps <= early.vm_steps * 1.3, (early, late)
    # And every event the loop appended is as small at turn 200 as at turn 20: a turn with
    # one tool call opens no fan-out group, so none piles up on the events that follow
    appended = [e for e in run_detail(store, run_id)["events"] if e["type"].startswith("agent.")]
    assert len(appended) > 2 * LATE_TURN
    assert {json.dumps(e["groups"]) for e in appended} == {"[]"}
    # And the model was sent the instructions, the input and the last context_window
    # messages, not the whole conversation
    calls = recorded_model_calls(run_id)
    sent = [len(c["request"]["messages"]) for c in calls]
    assert sent[LATE_TURN - 1] == sent[EARLY_TURN - 1] <= 2 + long_talker.context_window
