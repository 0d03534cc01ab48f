"""Redaction of exported conversations: a built-in mask for e-mail addresses and API tokens,
and the operator's own function named as ``MODULE:FUNCTION`` (message dict in, message dict
out), applied after the built-in one."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from typing import Any

from events import BatonError

Redactor = Callable[[dict[str, Any]], dict[str, Any]]

EMAIL_MASK = "[REDACTED_EMAIL]"
TOKEN_MASK = "[REDACTED_TOKEN]"

_SECRETS = [
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), EMAIL_MASK),
    # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), GitHub (ghp_, gho_, ghu_, ghs_, ghr_,
    # github_pat_), Slack (xox?-) and AWS access key ids.
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), TOKEN_MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), TOKEN_MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), TOKEN_MASK),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), TOKEN_MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), TOKEN_MASK),
]
# The message's structure, never its words: masking them could only break the example.
_STRUCTURAL_KEYS = frozenset({"role", "type", "id", "tool_call_id", "name"})


class RedactionError(BatonError):
    """A redactor cannot be loaded, or returned something that is not a message."""


def mask_text(text: str) -> str:
    """``text`` with e-mail addresses and API tokens masked."""
    for pattern, mask in _SECRETS:
        text = pattern.sub(mask, text)
    return text


def mask_secrets(message: dict[str, Any]) -> dict[str, Any]:
    """The built-in redactor: masks e-mail addresses and tokens in every text of a message,
    tool-call arguments included."""
    masked: dict[str, Any] = _masked(message)
    return masked


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return value if key in _STRUCTURAL_KEYS else mask_text(value)
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item, key) for item in value]
    return value


def load_redactor(spec: str) -> Redactor:
    """The function ``MODULE:FUNCTION`` names, imported as `baton worker` imports modules."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise RedactionError(
            f"--redact {spec!r} must name a function as MODULE:FUNCTION, e.g. "
            "myproject.redaction:scrub"
        )
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RedactionError(
            f"cannot import redactor module {module_name!r}: {error}; run from the folder "
            "that contains it or install it"
        ) from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise RedactionError(
            f"module {module_name!r} has no function {function_name!r} for --redact"
        )
    return _checked(function, spec)


def _checked(function: Callable[[dict[str, Any]], Any], spec: str) -> Redactor:
    def redact(message: dict[str, Any]) -> dict[str, Any]:
        result = function(message)
        if not isinstance(result, dict) or "role" not in result:
            raise RedactionError(
                f"redactor {spec} returned {type(result).__name__}, not a message; it must "
                "return the message dict it was given, changed"
            )
        return result

    return redact


def chain(*redactors: Redactor) -> Redactor:
    """One redactor applying ``redactors`` in order."""

    def redact(message: dict[str, Any]) -> dict[str, Any]:
        for redactor in redactors:
            message = redactor(message)
        return message

    return redact
