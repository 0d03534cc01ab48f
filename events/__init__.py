"""The vocabulary of Baton: the Event base, the built-in events and the type registry."""

from events._errors import BatonError, EventError
from events._event import (
    Event,
    describe_validation,
    event_class,
    parse_event,
    registered_types,
)
from events.builtin import RunCanceled, RunFailed, RunStarted, RunSucceeded, Signal

__all__ = [
    # errors
    "BatonError",
    # the base and the registry
    "Event",
    "EventError",
    "RunCanceled",
    "RunFailed",
    # built-in events
    "RunStarted",
    "RunSucceeded",
    "Signal",
    "describe_validation",
    "event_class",
    "parse_event",
    "registered_types",
]
