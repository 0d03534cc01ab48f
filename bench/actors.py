"""The actors the benchmarks run, in-process or under `baton worker bench.actors`."""

from __future__ import annotations

import time

from events import Event
from workers import Context, actor


class Noop(Event, type="bench.noop"):
    """P1: a run of one step that does nothing."""


class Hop(Event, type="bench.hop"):
    """P2: one link of a chain whose bodies sleep."""

    i: int
    n: int
    sleep_ms: int


class Tick(Event, type="bench.tick"):
    """P3: one link of a long chain that keeps a counter in run memory."""

    i: int
    n: int


class Stall(Event, type="bench.stall"):
    """P4: a step whose first attempt is killed while it sleeps."""

    seconds: float


@actor(on=Noop, retries=0)
def noop(event: Noop, ctx: Context) -> None:
    return None


@actor(on=Hop, retries=0)
def hop(event: Hop, ctx: Context) -> Hop | None:
    time.sleep(event.sleep_ms / 1000)
    if event.i < event.n:
        return Hop(i=event.i + 1, n=event.n, sleep_ms=event.sleep_ms)
    return None


@actor(on=Tick, retries=0)
def tick(event: Tick, ctx: Context) -> Tick | None:
    # Like examples.chain: one memory read and one memory write per step.
    ctx.memory["total"] = ctx.memory.get("total", 0) + event.i
    if event.i < event.n:
        return Tick(i=event.i + 1, n=event.n)
    return None


@actor(on=Stall, retries=3)
def stall(event: Stall, ctx: Context) -> None:
    # Only the first attempt stalls: the benchmark kills its worker, the next attempt finishes.
    if ctx.attempt == 1:
        time.sleep(event.seconds)
