"""``@actor``: subscribe a handler to event types. Options are checked at import time."""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, overload

from events import Event
from store import Preparer
from workers._durations import seconds
from workers._errors import ActorError

_QUEUE_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,60}$")
_NAME_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]{0,199}$")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ActorOptions:
    name: str
    on: tuple[type[Event], ...]
    queue: str
    retries: int | None
    timeout_seconds: float | None
    join: bool
    throws: tuple[type[BaseException], ...]
    is_async: bool
    # Built-in actors only (``prepared_by``): reads done in the transaction that claims a step.
    prepare: Preparer | None = None


class Actor(Generic[F]):
    """A registered handler. Calling it calls the function, so it can be tested directly."""

    def __init__(self, fn: F, options: ActorOptions) -> None:
        self.fn = fn
        self.options = options
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        types_ = ", ".join(cls.type for cls in self.options.on)
        return f"Actor({self.options.name!r}, on=[{types_}], queue={self.options.queue!r})"


_actors: dict[str, Actor[Any]] = {}
_subscribers: dict[str, list[Actor[Any]]] = {}


@overload
def actor(
    fn: F,
    *,
    on: type[Event] | Iterable[type[Event]],
    retries: int | None = None,
    timeout: float | str | None = None,
    queue: str = "default",
    join: bool = False,
    throws: type[BaseException] | tuple[type[BaseException], ...] = (),
    name: str | None = None,
) -> Actor[F]: ...


@overload
def actor(
    fn: None = None,
    *,
    on: type[Event] | Iterable[type[Event]],
    retries: int | None = None,
    timeout: float | str | None = None,
    queue: str = "default",
    join: bool = False,
    throws: type[BaseException] | tuple[type[BaseException], ...] = (),
    name: str | None = None,
) -> Callable[[F], Actor[F]]: ...


def actor(
    fn: F | None = None,
    *,
    on: type[Event] | Iterable[type[Event]],
    retries: int | None = None,
    timeout: float | str | None = None,
    queue: str = "default",
    join: bool = False,
    throws: type[BaseException] | tuple[type[BaseException], ...] = (),
    name: str | None = None,
) -> Actor[F] | Callable[[F], Actor[F]]:
    """Subscribe ``fn(event, ctx)`` to the event types in ``on``.

    ``retries``: retries after the first attempt (default from settings); ``timeout``: the
    step's time limit ("2m"); ``throws``: exceptions that fail the step at once, without retry;
    ``join=True``: run once per fan-out group with every event of the group, as a list.
    """

    def decorate(function: F) -> Actor[F]:
        options = _validate(function, on, retries, timeout, queue, join, throws, name)
        registered = Actor(function, options)
        existing = _actors.get(options.name)
        if existing is not None and _same_function(existing.fn, function):
            # Re-import of the same module (e.g. under another name): keep the first.
            return typing.cast(Actor[F], existing)
        if existing is not None:
            raise ActorError(f"two actors are named {options.name!r}; pass name=... to one of them")
        _actors[options.name] = registered
        for event_class in options.on:
            _subscribers.setdefault(event_class.type, []).append(registered)
        return registered

    return decorate if fn is None else decorate(fn)


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return bool(
        a.__qualname__ == b.__qualname__ and a.__code__.co_filename == b.__code__.co_filename
    )


def _validate(
    function: Callable[..., Any],
    on: type[Event] | Iterable[type[Event]],
    retries: int | None,
    timeout: float | str | None,
    queue: str,
    join: bool,
    throws: type[BaseException] | tuple[type[BaseException], ...],
    name: str | None,
) -> ActorOptions:
    label = f"actor {function.__module__}.{function.__qualname__}"
    event_classes = _event_classes(on, label)
    parameters = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) != 2:
        raise ActorError(
            f"{label} must take two arguments, (event, ctx); it takes {len(parameters)}"
        )
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ActorError(f"{label}: retries must be a whole number >= 0, got {retries!r}")
    try:
        timeout_seconds = None if timeout is None else seconds(timeout, what="timeout")
    except ValueError as error:
        raise ActorError(f"{label}: {error}") from None
    if not _QUEUE_PATTERN.match(queue):
        raise ActorError(f"{label}: queue {queue!r} must be 1-60 letters, digits, '_' or '-'")
    actor_name = name or f"{function.__module__}.{function.__qualname__}"
    if not _NAME_PATTERN.match(actor_name):
        raise ActorError(f"{label}: name {actor_name!r} must be a dotted identifier")
    throws_tuple = throws if isinstance(throws, tuple) else (throws,)
    for error_class in throws_tuple:
        if not (isinstance(error_class, type) and issubclass(error_class, BaseException)):
            raise ActorError(f"{label}: throws= takes exception classes, got {error_class!r}")
    return ActorOptions(
        name=actor_name,
        on=event_classes,
        queue=queue,
        retries=retries,
        timeout_seconds=timeout_seconds,
        join=join,
        throws=throws_tuple,
        is_async=inspect.iscoroutinefunction(function),
    )


def _event_classes(on: Any, label: str) -> tuple[type[Event], ...]:
    candidates = _flatten(on)
    if not candidates:
        raise ActorError(f"{label}: on= names no event class; pass on=MyEvent or on=[A, B]")
    for candidate in candidates:
        if not (isinstance(candidate, type) and issubclass(candidate, Event)):
            raise ActorError(
                f"{label}: on= takes Event subclasses, got {candidate!r}; declare one with "
                'class MyEvent(Event, type="area.thing")'
            )
    return tuple(candidates)


def _flatten(on: Any) -> list[Any]:
    if isinstance(on, types.UnionType) or typing.get_origin(on) is typing.Union:
        return list(typing.get_args(on))
    if isinstance(on, type):
        return [on]
    if isinstance(on, Iterable):
        return list(on)
    return [on]


def prepared_by(registered: Actor[Any], prepare: Preparer) -> None:
    """Have ``prepare`` read what ``registered``'s handler needs in the transaction that claims
    each of its steps (``ctx._prepared``), instead of in a transaction of its own."""
    registered.options = replace(registered.options, prepare=prepare)


def registered_actors() -> list[Actor[Any]]:
    """Every actor declared so far, in declaration order."""
    return list(_actors.values())


def subscribers(event_type: str) -> list[Actor[Any]]:
    """The actors subscribed to ``event_type``."""
    return list(_subscribers.get(event_type, ()))


def find_actor(name: str) -> Actor[Any] | None:
    return _actors.get(name)
