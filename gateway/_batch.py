"""Group commit: the runs requested while one transaction commits are created by the next,
with ``store.create_runs``; each request carries the future its HTTP request waits on."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from store import CreatedRun, create_runs
from store import RunRequest as _StoreRunRequest

__all__ = ["RunRequest", "create_runs"]


@dataclass(frozen=True)
class RunRequest(_StoreRunRequest):
    answer: Future[CreatedRun] = field(default_factory=Future, compare=False)
