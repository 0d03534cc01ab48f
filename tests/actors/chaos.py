"""Actors for the chaos tests: a chain of steps with keyed side effects (sync steps, and
async ones, which a worker continues itself), and a slow step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from events import Event
from tests.actors import effects
from workers import Context, actor


class ChaosStep(Event, type="t_chaos.step"):
    """Step ``i`` of ``steps``; the trigger is step 1. ``effects`` is the ledger's path.
    Step ``hold_at`` (if any) does not return before the file ``gate`` exists."""

    effects: str
    i: int = 1
    steps: int = 10
    pause: float = 0.2
    hold_at: int = 0
    gate: str = ""


class ChaosDone(Event, type="t_chaos.done"):
    steps: int


class SlowStep(Event, type="t_chaos.slow"):
    effects: str
    pause: float


class SlowDone(Event, type="t_chaos.slow_done"):
    attempt: int


@actor(on=ChaosStep, retries=10)
def chaos_step(event: ChaosStep, ctx: Context) -> ChaosStep | ChaosDone:
    label = f"{ctx.run_id}/{event.i}"
    effects.record_call(event.effects, ctx.idempotency_key, label, ctx.attempt)
    # Pauses on both sides of the side effect: a kill can land before it or after it.
    time.sleep(event.pause / 2)
    effects.record_effect(event.effects, ctx.idempotency_key, label)
    time.sleep(event.pause / 2)
    deadline = time.monotonic() + 60
    while event.i == event.hold_at and not Path(event.gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {event.gate} was never opened")
        time.sleep(0.02)
    if event.i < event.steps:
        return event.model_copy(update={"i": event.i + 1})
    return ChaosDone(steps=event.steps)


class AsyncChaosStep(Event, type="t_chaos.async_step"):
    """``ChaosStep`` as an async chain: each commit hands the next step to its own worker."""

    effects: str
    i: int = 1
    steps: int = 10
    pause: float = 0.2


@actor(on=AsyncChaosStep, retries=10)
async def async_chaos_step(event: AsyncChaosStep, ctx: Context) -> AsyncChaosStep | ChaosDone:
    label = f"{ctx.run_id}/{event.i}"
    effects.record_call(event.effects, ctx.idempotency_key, label, ctx.attempt)
    await asyncio.sleep(event.pause / 2)
    effects.record_effect(event.effects, ctx.idempotency_key, label)
    await asyncio.sleep(event.pause / 2)
    if event.i < event.steps:
        return event.model_copy(update={"i": event.i + 1})
    return ChaosDone(steps=event.steps)


@actor(on=SlowStep, retries=2)
def slow_step(event: SlowStep, ctx: Context) -> SlowDone:
    effects.record_call(event.effects, ctx.idempotency_key, ctx.run_id, ctx.attempt)
    # Only the first attempt is slow: it is the one the test kills.
    time.sleep(event.pause if ctx.attempt == 1 else 0)
    return SlowDone(attempt=ctx.attempt)
