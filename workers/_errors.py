"""Errors and control-flow signals of the runtime."""

from __future__ import annotations

import math

from events import BatonError


class ActorError(BatonError):
    """An actor is declared wrongly; raised when its module is imported."""


class WorkerError(BatonError):
    """The worker cannot start or cannot reach the broker."""


class RetryLater(BatonError):
    """A failure whose cause says when to try again (a provider's ``Retry-After``): the
    step's next attempt waits at least that long, instead of only its usual backoff. It
    still uses up one of the step's retries."""

    # A cause asking for longer is taken at this: a header cannot put a step off for days.
    LONGEST_SECONDS = 3600.0

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        finite = retry_after_seconds if math.isfinite(retry_after_seconds) else 0.0
        self.retry_after_seconds = min(max(finite, 0.0), self.LONGEST_SECONDS)


class Wait(Exception):
    """Raised by ``ctx.wait_for``: park this step until a named signal or the deadline."""

    def __init__(self, names: tuple[str, ...], deadline: float | None) -> None:
        super().__init__(", ".join(names))
        self.names = names
        self.deadline = deadline


class WaitTimeout(BatonError):
    """A wait's deadline passed before its signal arrived."""
