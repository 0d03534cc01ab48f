"""Errors of the store."""

from __future__ import annotations

from events import BatonError


class StoreError(BatonError):
    """The store was asked for something it cannot do."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or used."""


class WriterBusy(StoreError):
    """A write asked not to wait found the writer taken: nothing was done; write it where
    waiting is allowed."""


class NotFound(StoreError):
    """A run, step or wait named by the caller does not exist."""


class InvalidState(StoreError):
    """The operation does not apply to the current state (e.g. replay of a running run)."""


class SignalAmbiguous(InvalidState):
    """Several steps wait for the signal and the sender named neither one nor all."""


class LeaseLost(StoreError):
    """The step's lease passed to another worker; this worker's result is discarded."""
