"""Durations written the way people write them: 30, "500ms", "2m", "1h"."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def seconds(value: float | int | str, *, what: str) -> float:
    """Seconds in ``value``; ValueError naming ``what`` and the accepted forms otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{what} must be positive, got {value!r}")
        return float(value)
    match = _PATTERN.match(str(value))
    if not match:
        raise ValueError(
            f"{what} {value!r} is not a duration; write seconds (30) or a string such as "
            '"500ms", "30s", "2m", "1h"'
        )
    amount = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if amount <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return amount
