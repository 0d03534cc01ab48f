"""The vocabulary of Baton: the Event base, the built-in events and the type registry."""

from events._errors import BatonError, EventError
from events._event import (
    Event,
    describe_validation,
    event_class,
    parse_event,
    registered_types,
)
from events.builtin import (
    RunCanceled,
    RunFailed,
    RunForked,
    RunReplayed,
    RunSucceeded,
    Signal,
)

__all__ = [
    # errors
    "BatonError",
    "EventError",
    # the base and the registry
    "Event",
    "describe_validation",
    "event_class",
    "parse_event",
    "registered_types",
    # built-in events
    "RunCanceled",
    "RunFailed",
    "RunForked",
    "RunReplayed",
    "RunSucceeded",
    "Signal",
]
