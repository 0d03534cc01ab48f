"""Cassettes: recorded chat completions, replayed in order, failing loudly on any mismatch."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._protocol import ChatCompletionRequest, OfflineModelError, TextFormat

__all__ = ["Cassette", "CassetteError", "CassettePlayer", "Exchange"]

_MISSING = "<missing>"
_REPR_LIMIT = 240


class CassetteError(ValueError):
    """A cassette file that cannot be read or does not hold valid exchanges."""


class Exchange(BaseModel):
    """One recorded request (an OpenAI request body) and the response body it got."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: dict[str, Any]
    response: dict[str, Any]

    @field_validator("request")
    @classmethod
    def _request_is_a_chat_completion(cls, value: dict[str, Any]) -> dict[str, Any]:
        ChatCompletionRequest.model_validate(value)
        return value

    @field_validator("response")
    @classmethod
    def _response_has_choices(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("choices"), list):
            raise ValueError("a recorded response needs a 'choices' list (a chat.completion body)")
        return value


class Cassette(BaseModel):
    """Recorded exchanges, as the JSON file `{"version": 1, "exchanges": [...]}`."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    exchanges: list[Exchange] = Field(default_factory=list)

    def record(
        self, request: Mapping[str, Any] | BaseModel, response: Mapping[str, Any] | BaseModel
    ) -> Exchange:
        """Append an exchange: wire bodies, or pydantic models of them (an openai response)."""
        exchange = Exchange(request=_as_body(request), response=_as_body(response))
        self.exchanges.append(exchange)
        return exchange

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cassette as indented JSON, atomically (a reader never sees half a file)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = self.model_dump_json(indent=2) + "\n"
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.", delete=False
        ) as handle:
            handle.write(text)
        os.replace(handle.name, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Cassette:
        """Read a cassette file; raises `CassetteError` naming the file and the problem."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise CassetteError(f"cannot read cassette {str(path)!r}: {error}") from error
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise CassetteError(
                f"cassette {str(path)!r} is not a valid version-1 cassette: {error}; "
                "re-record it or fix the JSON"
            ) from error


def _as_body(value: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        body = value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    else:
        body = dict(value)
    # A JSON round trip keeps only what the wire can carry and detaches the caller's objects.
    result: dict[str, Any] = json.loads(json.dumps(body))
    return result


class CassettePlayer:
    """Replays one cassette in order for one server; safe to call from any thread or task."""

    def __init__(self, cassette: Cassette) -> None:
        self._cassette = cassette
        self._position = 0
        self._lock = threading.Lock()

    @property
    def position(self) -> int:
        """How many exchanges have been replayed."""
        return self._position

    def play(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The recorded response for the next exchange, if `body` matches its request."""
        got = _match_view(body)
        with self._lock:
            index = self._position
            total = len(self._cassette.exchanges)
            if index >= total:
                raise OfflineModelError(
                    400,
                    f"cassette exhausted: all {total} recorded exchange(s) were replayed, but "
                    f"another request arrived (model {got['model']!r}, "
                    f"{len(got['messages'])} message(s)); record a longer cassette or check why "
                    "the code makes more model calls than when it was recorded",
                    error_type="cassette_mismatch",
                    code="cassette_exhausted",
                )
            exchange = self._cassette.exchanges[index]
            difference = _first_difference(_match_view(exchange.request), got, "")
            if difference is not None:
                path, expected, actual = difference
                raise OfflineModelError(
                    400,
                    f"cassette mismatch at exchanges[{index}] (of {total}): {path} expected "
                    f"{_short(expected)} but got {_short(actual)}; the code under test no longer "
                    "sends what was recorded: fix it or re-record the cassette",
                    error_type="cassette_mismatch",
                    param=path,
                    code="cassette_mismatch",
                )
            self._position += 1
            return copy.deepcopy(exchange.response)


def _match_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a request a replay must agree on, normalised for comparison."""
    request = ChatCompletionRequest.model_validate(body)
    response_format = request.response_format
    return {
        "model": request.model,
        "messages": [
            {
                "role": message.role,
                "content": message.text,
                "tool_calls": [
                    {"name": call.function.name, "arguments": _arguments(call.function.arguments)}
                    for call in message.tool_calls or []
                ],
                "tool_call_id": message.tool_call_id,
            }
            for message in request.messages
        ],
        "tools": sorted(request.tool_names),
        "response_format": None
        if response_format is None or isinstance(response_format, TextFormat)
        else response_format.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _arguments(text: str) -> Any:
    # Compare arguments as JSON values so key order and spacing do not count as a difference.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _first_difference(expected: Any, got: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(expected, dict) and isinstance(got, dict) and path != "tools":
        for key in [*expected, *(k for k in got if k not in expected)]:
            child = f"{path}.{key}" if path else str(key)
            if key not in got:
                return child, expected[key], _MISSING
            if key not in expected:
                return child, _MISSING, got[key]
            found = _first_difference(expected[key], got[key], child)
            if found is not None:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list) and path != "tools":
        for index, (left, right) in enumerate(zip(expected, got, strict=False)):
            found = _first_difference(left, right, f"{path}[{index}]")
            if found is not None:
                return found
        if len(expected) != len(got):
            index = min(len(expected), len(got))
            left = expected[index] if index < len(expected) else _MISSING
            right = got[index] if index < len(got) else _MISSING
            return f"{path}[{index}]", left, right
        return None
    return None if expected == got else (path, expected, got)


def _short(value: Any) -> str:
    text = value if value == _MISSING else repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."
