"""Errors and control-flow signals of the runtime."""

from __future__ import annotations

from events import BatonError


class ActorError(BatonError):
    """An actor is declared wrongly; raised when its module is imported."""


class WorkerError(BatonError):
    """The worker cannot start or cannot reach the broker."""


class Wait(Exception):
    """Raised by ``ctx.wait_for``: park this step until a named signal or the deadline."""

    def __init__(self, names: tuple[str, ...], deadline: float | None) -> None:
        super().__init__(", ".join(names))
        self.names = names
        self.deadline = deadline


class WaitTimeout(BatonError):
    """A wait's deadline passed before its signal arrived."""
