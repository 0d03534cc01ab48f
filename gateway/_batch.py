"""Group commit: the runs requested while one transaction commits are created by the next,
with ``store.create_runs``; each request carries the future its caller waits on.

A request from the event loop waits on an asyncio future, and a batch settles all of a
loop's futures with one call into that loop; a request from a thread waits on a
``concurrent.futures.Future``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from store import CreatedRun, create_runs
from store import RunRequest as _StoreRunRequest

__all__ = ["RunRequest", "create_runs", "settle"]

Answer = Future[CreatedRun] | asyncio.Future[CreatedRun]


@dataclass(frozen=True)
class RunRequest(_StoreRunRequest):
    answer: Answer = field(default_factory=Future, compare=False)


def settle(requests: Sequence[RunRequest], outcomes: Sequence[CreatedRun | BaseException]) -> None:
    """Hand each request its run (or error): one call into each event loop waiting."""
    on_loops: dict[asyncio.AbstractEventLoop, list[tuple[Answer, CreatedRun | BaseException]]]
    on_loops = {}
    for request, outcome in zip(requests, outcomes, strict=True):
        answer = request.answer
        if isinstance(answer, asyncio.Future):
            on_loops.setdefault(answer.get_loop(), []).append((answer, outcome))
        else:
            _settle_one(answer, outcome)
    for loop, answers in on_loops.items():
        # A closed loop has nobody waiting any more; the runs are committed all the same.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_all, answers)


def _settle_all(answers: list[tuple[Answer, CreatedRun | BaseException]]) -> None:
    for answer, outcome in answers:
        _settle_one(answer, outcome)


def _settle_one(answer: Answer, outcome: CreatedRun | BaseException) -> None:
    # A request whose caller went away (a cancelled future) was still committed.
    if answer.done():
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
