"""The trigger event of a webhook: validated by the application's class for its type.

An actor can only subscribe to a type through an Event class, so every type that starts a
run has a class, and the payload is validated by it:

- an application's own class, e.g. ``class IssueOpened(Event, type="github.issues.opened")``,
  validates the payload as it is declared. Events forbid unknown fields, so a class that takes
  only a few of a large payload's fields says so with ``model_config =
  ConfigDict(extra="ignore")``; fields deeper in the payload are reached with
  ``Field(validation_alias=AliasPath("issue", "number"))`` (add ``validate_by_name=True`` so
  the stored event, which is keyed by field name, validates again in the worker).
  An invalid payload is refused with 422 naming the field; nothing is stored.
- ``webhook_event("github.issues.opened")`` is the generic class: it carries any JSON object
  whole (``event.payload``), for an actor that wants the raw payload.

A type no actor subscribes to needs no class: the delivery is recorded and ignored.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, ValidationError

from events import Event, EventError, describe_validation, event_class
from gateway._errors import ApiError

_generic: dict[str, type[Event]] = {}


class _Payload:
    """Mixed into generic webhook events: the whole payload, as a dict."""

    @property
    def payload(self) -> dict[str, Any]:
        extra = getattr(self, "model_extra", None)
        return dict(extra or {})


def webhook_event(event_type: str) -> type[Event]:
    """The generic Event class for ``event_type``: any JSON object, carried whole.

    ``IssueOpened = webhook_event("github.issues.opened")`` then ``@actor(on=IssueOpened)``;
    the handler reads ``event.payload["issue"]["title"]``. Calling it again returns the same
    class; if the application already declared its own class for the type, that is an error.
    """
    if event_type in _generic:
        return _generic[event_type]
    name = "".join(part.capitalize() for part in re.split(r"[^a-zA-Z0-9]+", event_type))
    namespace = {
        "model_config": ConfigDict(extra="allow"),
        "__module__": __name__,
        "__qualname__": f"webhook_event.{name}",
        "__doc__": f"Any payload delivered as {event_type!r}, carried whole.",
    }
    generic = type(name, (_Payload, Event), namespace, type=event_type)
    _generic[event_type] = generic
    return generic


def trigger_event(event_type: str, data: dict[str, Any]) -> Event:
    """Validate ``data`` with the class registered for ``event_type``; ApiError 422 if invalid."""
    try:
        cls = event_class(event_type)
    except EventError as error:
        raise ApiError(422, "unknown_event_type", f"type: {error}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        detail = f"invalid payload for {event_type!r}: {describe_validation(error)}"
        if any(item["type"] == "extra_forbidden" for item in error.errors()):
            detail += (
                f"; {cls.__name__} forbids fields it does not declare: to take part of the "
                'payload, declare model_config = ConfigDict(extra="ignore") on it'
            )
        raise ApiError(422, "invalid_payload", detail) from None
