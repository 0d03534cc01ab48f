"""Actors for the operator tests (replay, fork, cancel): a chain whose middle step fails until
a flag file exists, a slow step to cancel, and a small agent with one tool. Every step records
its calls in the ledger (tests.actors.effects) under "<run id>/<step>", so a test counts what
ran where."""

from __future__ import annotations

import time
from pathlib import Path

from events import Event
from tests.actors import effects
from workers import Agent, Context, actor, tool


class OpsStart(Event, type="t_ops.start"):
    """A chain of ``steps`` steps; step ``fail_at`` fails until the file ``flag`` exists."""

    ledger: str
    flag: str
    steps: int = 3
    fail_at: int = 2


class OpsStep(Event, type="t_ops.step"):
    """Step ``i`` adds ``add`` to the run's total (an edit of a fork changes it)."""

    ledger: str
    flag: str
    i: int
    steps: int
    fail_at: int
    add: int


class OpsDone(Event, type="t_ops.done"):
    total: int


class OpsSlow(Event, type="t_ops.slow"):
    ledger: str
    pause: float


class OpsSlowDone(Event, type="t_ops.slow_done"):
    pass


class FlakyDown(Exception):
    """The outside system this step needs is down (until the flag file appears)."""


@actor(on=OpsStart, retries=0)
def ops_begin(event: OpsStart, ctx: Context) -> OpsStep:
    effects.record_call(event.ledger, ctx.idempotency_key, f"{ctx.run_id}/begin", ctx.attempt)
    ctx.memory["total"] = 0
    return OpsStep(
        ledger=event.ledger,
        flag=event.flag,
        i=1,
        steps=event.steps,
        fail_at=event.fail_at,
        add=1,
    )


@actor(on=OpsStep, retries=0)
def ops_step(event: OpsStep, ctx: Context) -> OpsStep | OpsDone:
    label = f"{ctx.run_id}/step{event.i}"
    effects.record_call(event.ledger, ctx.idempotency_key, label, ctx.attempt)
    if event.i == event.fail_at and not Path(event.flag).exists():
        raise FlakyDown(f"the flag {event.flag} is not set")
    effects.record_effect(event.ledger, ctx.idempotency_key, label)
    total = ctx.memory["total"] + event.add
    ctx.memory["total"] = total
    if event.i < event.steps:
        return event.model_copy(update={"i": event.i + 1, "add": event.i + 1})
    return OpsDone(total=total)


@actor(on=OpsSlow, retries=0)
def ops_slow(event: OpsSlow, ctx: Context) -> OpsSlowDone:
    effects.record_call(event.ledger, ctx.idempotency_key, f"{ctx.run_id}/slow", ctx.attempt)
    time.sleep(event.pause)
    effects.record_effect(event.ledger, ctx.idempotency_key, f"{ctx.run_id}/slow")
    return OpsSlowDone()


# -- an agent: the question's step opens its loop (the answer is the loop's output); its tool
# records every call. AgentFinished is left to the agent tests' own subscribers.


class OpsAsk(Event, type="t_ops.ask"):
    ledger: str
    question: str


@tool(idempotent=True)
def t_ops_lookup(topic: str, ctx: Context) -> str:
    """Look a topic up in the team's notes."""
    ledger = ctx.memory["ledger"]
    effects.record_call(ledger, ctx.idempotency_key, f"{ctx.run_id}/lookup", ctx.attempt)
    return f"notes on {topic}: nothing unusual"


ops_agent = Agent(
    name="t_ops_agent",
    model="gpt-4.1-mini",
    instructions="You answer operators' questions. Look the topic up first, then answer briefly.",
    tools=[t_ops_lookup],
    max_steps=6,
)


@actor(on=OpsAsk)
def ops_ask(event: OpsAsk, ctx: Context) -> Event:
    ctx.memory["ledger"] = event.ledger
    return ops_agent.start(ctx, event.question)


# -- a non-idempotent tool: a worker killed inside it leaves the call's outcome unknown -------


class OpsPay(Event, type="t_ops.pay"):
    ledger: str
    pause: float


@tool(idempotent=False)
def t_ops_charge(amount: int, ctx: Context) -> str:
    """Charge the customer (not idempotent: a repeat charges twice)."""
    ledger = ctx.memory["ledger"]
    effects.record_call(ledger, ctx.idempotency_key, f"{ctx.run_id}/charge", ctx.attempt)
    if ctx.attempt == 1:
        time.sleep(ctx.memory["pause"])
    return f"charged {amount}"


ops_payer = Agent(
    name="t_ops_payer",
    model="gpt-4.1-mini",
    instructions="You take payments. Charge the customer, then confirm.",
    tools=[t_ops_charge],
    max_steps=4,
)


@actor(on=OpsPay)
def ops_pay(event: OpsPay, ctx: Context) -> Event:
    ctx.memory["ledger"] = event.ledger
    ctx.memory["pause"] = event.pause
    return ops_payer.start(ctx, "Charge the customer for order 7.")
