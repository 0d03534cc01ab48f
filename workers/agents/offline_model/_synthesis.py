"""Synthesise a JSON value that validates against a JSON schema, filled from the conversation.

Covers what pydantic and OpenAI's strict mode emit: objects (required and optional properties),
arrays (minItems/maxItems/uniqueItems), strings (minLength/maxLength, common formats), integers
and numbers (minimum/maximum, exclusive bounds, multipleOf), booleans, enum/const, null,
anyOf/oneOf (nullable), allOf and local `$ref`s into `$defs`/`definitions`. `pattern` is not
honoured.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any

from ._conversation import Conversation

__all__ = ["synthesise"]

_MAX_DEPTH = 6
_HARD_DEPTH = 24
_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "00:00:00Z",
    "duration": "PT1M",
    "email": "offline@example.com",
    "idn-email": "offline@example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/offline",
    "url": "https://example.com/offline",
    "iri": "https://example.com/offline",
}
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def synthesise(schema: dict[str, Any], conversation: Conversation) -> Any:
    """A value valid against `schema`, preferring values the conversation names."""
    return _Synthesiser(schema, conversation).value(schema, name=None, depth=0, index=0)


class _Synthesiser:
    def __init__(self, root: dict[str, Any], conversation: Conversation) -> None:
        self._root = root
        self._conversation = conversation

    def value(self, schema: Any, *, name: str | None, depth: int, index: int) -> Any:
        if depth > _HARD_DEPTH:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._choose(schema["enum"], index)
        for keyword in ("anyOf", "oneOf"):
            if isinstance(schema.get(keyword), list) and schema[keyword]:
                return self._alternative(schema[keyword], name=name, depth=depth, index=index)
        kind = _type_of(schema)
        if kind == "null":
            return None
        if kind == "object":
            return self._object(schema, depth=depth)
        if kind == "array":
            return self._array(schema, name=name, depth=depth)
        if kind in {"integer", "number"}:
            return self._number(schema, name=name, index=index, integer=kind == "integer")
        if kind == "boolean":
            return self._boolean(name)
        return self._string(schema, name=name, index=index)

    def _resolve(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            return {}
        schema: dict[str, Any] = value
        seen: set[str] = set()
        while isinstance(schema.get("$ref"), str) and schema["$ref"] not in seen:
            seen.add(schema["$ref"])
            target = self._pointer(schema["$ref"])
            siblings = {key: value for key, value in schema.items() if key != "$ref"}
            schema = {**target, **siblings}
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part)
                merged.setdefault("properties", {}).update(part.get("properties", {}))
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                merged.update({k: v for k, v in part.items() if k not in merged})
            for key in ("properties", "required"):
                if not merged.get(key):
                    merged.pop(key, None)
            schema = merged
        return schema

    def _pointer(self, reference: str) -> dict[str, Any]:
        if not reference.startswith("#"):
            return {}
        node: Any = self._root
        for part in reference.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        resolved: dict[str, Any] = node if isinstance(node, dict) else {}
        return resolved

    def _alternative(self, branches: list[Any], *, name: str | None, depth: int, index: int) -> Any:
        resolved = [self._resolve(branch) for branch in branches]
        concrete = [branch for branch in resolved if _type_of(branch) != "null"]
        nullable = len(concrete) < len(resolved)
        if not concrete or (nullable and depth >= _MAX_DEPTH):
            return None
        return self.value(concrete[0], name=name, depth=depth, index=index)

    def _choose(self, options: list[Any], index: int) -> Any:
        chosen = self._conversation.mentioned(options)
        return options[((chosen or 0) + index) % len(options)]

    def _object(self, schema: dict[str, Any], *, depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = [name for name in schema.get("required", []) if isinstance(name, str)]
        result: dict[str, Any] = {}
        for name, property_schema in properties.items():
            if depth >= _MAX_DEPTH and name not in required:
                continue
            result[name] = self.value(property_schema, name=name, depth=depth + 1, index=0)
        extra = schema.get("additionalProperties")
        extra_schema = extra if isinstance(extra, dict) else {}
        for name in required:
            if name not in result:
                result[name] = self.value(extra_schema, name=name, depth=depth + 1, index=0)
        minimum = int(schema.get("minProperties", 0))
        while len(result) < minimum and extra is not False:
            name = f"key{len(result) + 1}"
            result[name] = self.value(extra_schema, name=name, depth=depth + 1, index=0)
        return result

    def _array(self, schema: dict[str, Any], *, name: str | None, depth: int) -> list[Any]:
        minimum = int(schema.get("minItems", 0))
        count = minimum if depth >= _MAX_DEPTH else max(minimum, 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        prefix: list[Any] = schema.get("prefixItems") or []
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        unique = bool(schema.get("uniqueItems"))
        values = []
        for position in range(count):
            item_schema = prefix[position] if position < len(prefix) else items
            values.append(
                self.value(item_schema, name=name, depth=depth + 1, index=position if unique else 0)
            )
        return values

    def _number(
        self, schema: dict[str, Any], *, name: str | None, index: int, integer: bool
    ) -> int | float:
        low, high = _bounds(schema, integer=integer)
        written = self._conversation.lookup_number(name) if name else None
        if written is not None and (not integer or written.is_integer()):
            within = (low is None or written >= low) and (high is None or written <= high)
            if within:
                return int(written) if integer else written
        value: float = 1 + index
        if low is not None and value < low:
            value = low + index
        if high is not None and value > high:
            value = high if low is None else (low + high) / 2
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and step > 0:
            value = math.ceil(value / step) * step
            if high is not None and value > high:
                value -= step
        return math.ceil(value) if integer else float(value)

    def _boolean(self, name: str | None) -> bool:
        written = (self._conversation.lookup(name) or "").lower() if name else ""
        return written not in _FALSE_WORDS

    def _string(self, schema: dict[str, Any], *, name: str | None, index: int) -> str:
        format_name = schema.get("format")
        if format_name == "uuid":
            digest = hashlib.sha256(f"{name}:{index}".encode()).digest()
            return str(uuid.UUID(bytes=digest[:16], version=4))
        if format_name in _FORMATS:
            return _FORMATS[format_name]
        value = (self._conversation.text_for(name) if name else None) or f"offline-{name or 'text'}"
        if index:
            value = f"{value}-{index + 1}"
        maximum = schema.get("maxLength")
        if isinstance(maximum, int):
            value = value[:maximum]
        minimum = schema.get("minLength")
        if isinstance(minimum, int) and len(value) < minimum:
            value = value + "x" * (minimum - len(value))
        return value


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        concrete = [k for k in kind if k != "null"]
        return str(concrete[0]) if concrete else "null"
    if isinstance(kind, str):
        return kind
    if any(key in schema for key in ("properties", "additionalProperties", "required")):
        return "object"
    if any(key in schema for key in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(key in schema for key in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
        return "number"
    return "string"


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
    low: float | None = schema.get("minimum")
    high: float | None = schema.get("maximum")
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    if isinstance(exclusive_low, int | float):
        candidate = math.floor(exclusive_low) + 1 if integer else exclusive_low + _epsilon(schema)
        low = candidate if low is None else max(low, candidate)
    if isinstance(exclusive_high, int | float):
        candidate = math.ceil(exclusive_high) - 1 if integer else exclusive_high - _epsilon(schema)
        high = candidate if high is None else min(high, candidate)
    if integer:
        low = math.ceil(low) if low is not None else None
        high = math.floor(high) if high is not None else None
    return low, high


def _epsilon(schema: dict[str, Any]) -> float:
    low = schema.get("exclusiveMinimum", schema.get("minimum"))
    high = schema.get("exclusiveMaximum", schema.get("maximum"))
    if isinstance(low, int | float) and isinstance(high, int | float) and high > low:
        return min(1.0, (high - low) / 4)
    return 1.0
