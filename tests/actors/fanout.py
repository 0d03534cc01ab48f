"""Actors for the fan-out tests, run by in-process workers: a split into N items, N workers in
parallel, and a join that receives all N results at once. What they observe is kept here."""

from __future__ import annotations

import threading
import time

from events import Event
from workers import Context, actor


class Batch(Event, type="t_fanout.batch"):
    size: int


class Item(Event, type="t_fanout.item"):
    index: int


class ItemDone(Event, type="t_fanout.item_done"):
    index: int


class Gathered(Event, type="t_fanout.gathered"):
    indices: list[int]


_lock = threading.Lock()
# (run id, start, end) of every item handled, and (run id, indices) of every join call.
item_spans: list[tuple[str, float, float]] = []
join_calls: list[tuple[str, list[int]]] = []


def reset() -> None:
    with _lock:
        item_spans.clear()
        join_calls.clear()


@actor(on=Batch)
def split(event: Batch, ctx: Context) -> list[Item]:
    return [Item(index=i) for i in range(event.size)]


@actor(on=Item)
def work(event: Item, ctx: Context) -> ItemDone:
    started = time.monotonic()
    time.sleep(0.05)
    with _lock:
        item_spans.append((ctx.run_id, started, time.monotonic()))
    return ItemDone(index=event.index)


@actor(on=ItemDone, join=True)
def gather(events: list[ItemDone], ctx: Context) -> Gathered:
    indices = [e.index for e in events]
    with _lock:
        join_calls.append((ctx.run_id, indices))
    return Gathered(indices=sorted(indices))
