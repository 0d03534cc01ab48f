"""Errors of the event vocabulary and the root of all of Baton's errors."""

from __future__ import annotations


class BatonError(Exception):
    """Root of every error Baton raises on purpose."""


class EventError(BatonError):
    """An event type or payload is unknown or invalid."""
