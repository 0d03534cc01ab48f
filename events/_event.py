"""The Event base class and the registry from type string to class."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from events._errors import EventError

_TYPE_PATTERN = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_\-]+)+$")
_registry: dict[str, type[Event]] = {}


class Event(BaseModel):
    """An immutable, typed fact appended to a run's log.

    Declare one with ``class IssueOpened(Event, type="github.issues.opened")``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str]

    def __init_subclass__(cls, *, type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type is None:
            raise EventError(
                f"event class {cls.__qualname__} has no type; declare it as "
                f'class {cls.__name__}(Event, type="area.thing.happened")'
            )
        if not _TYPE_PATTERN.match(type):
            raise EventError(
                f"event type {type!r} of {cls.__qualname__} is not a dotted lower-case name "
                'such as "github.issues.opened"'
            )
        existing = _registry.get(type)
        if existing is not None and _qualified(existing) != _qualified(cls):
            raise EventError(
                f"event type {type!r} is declared twice: by {_qualified(existing)} and by "
                f"{_qualified(cls)}; give one of them another type"
            )
        cls.type = type
        _registry[type] = cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def event_class(type: str) -> type[Event]:
    """The class registered for ``type``; EventError naming the known types if none is."""
    try:
        return _registry[type]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise EventError(f"unknown event type {type!r}; registered types: {known}") from None


def registered_types() -> list[str]:
    """Every registered event type, sorted."""
    return sorted(_registry)


def parse_event(type: str, data: Any) -> Event:
    """Validate ``data`` as an event of ``type``; EventError names the type and the field."""
    cls = event_class(type)
    if not isinstance(data, dict):
        raise EventError(f"data for event {type!r} must be a JSON object, got {_json_kind(data)}")
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise EventError(f"invalid data for event {type!r}: {describe_validation(error)}") from None


def describe_validation(error: ValidationError) -> str:
    """One line per problem, each naming the field: 'n: Input should be a valid integer'."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(root)"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return type(value).__name__
