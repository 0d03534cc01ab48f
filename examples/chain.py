"""The smallest durable chain: a counter carried through run memory, one step per tick."""

from events import Event
from workers import Context, actor


class Start(Event, type="chain.start"):
    n: int


class Tick(Event, type="chain.tick"):
    i: int
    n: int


class Done(Event, type="chain.done"):
    total: int


@actor(on=Start)
def begin(event: Start, ctx: Context) -> Tick:
    ctx.memory["total"] = 0
    return Tick(i=1, n=event.n)


@actor(on=Tick, retries=3)
def tick(event: Tick, ctx: Context) -> Tick | Done:
    total = ctx.memory["total"] + event.i
    ctx.memory["total"] = total
    if event.i < event.n:
        return Tick(i=event.i + 1, n=event.n)
    return Done(total=total)
