"""What every webhook source does: verify the raw body, then say what was delivered."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway._errors import ApiError

MAX_DELIVERY_ID = 200
MAX_EVENT_TYPE = 200
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: who sent it, its id, the event type and the event's data."""

    source: str
    delivery_id: str
    event_type: str
    data: dict[str, Any]


class WebhookSource(ABC):
    """One sender family (GitHub, Standard Webhooks) and the secrets it signs with."""

    name: str

    @abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise ApiError 401 unless ``body`` is signed by one of the secrets."""

    @abstractmethod
    def delivery(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        """Parse a verified body: ApiError 400 for malformed input, 422 for a bad payload."""


def parse_payload(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 if it is not JSON, 422 if it is JSON but not an object."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = (
            f" ({error.msg} at character {error.pos})"
            if isinstance(error, json.JSONDecodeError)
            else ""
        )
        raise ApiError(
            400,
            "malformed_json",
            f"the body is signed but is not valid UTF-8 JSON{where}; send the JSON document "
            "the signature was made over",
        ) from None
    if not isinstance(payload, dict):
        raise ApiError(
            422,
            "invalid_payload",
            f"(root): the payload must be a JSON object, got {type(payload).__name__}",
        )
    return payload


def delivery_id(headers: Mapping[str, str], header: str) -> str:
    """The delivery id from ``header``: printable ASCII, at most 200 characters."""
    value = headers.get(header, "")
    if not value:
        raise ApiError(400, "missing_header", f"no {header} header; it names the delivery")
    if len(value) > MAX_DELIVERY_ID or not _PRINTABLE.match(value):
        raise ApiError(
            400,
            "bad_header",
            f"{header} must be 1-{MAX_DELIVERY_ID} printable ASCII characters without spaces",
        )
    return value


def checked_event_type(value: Any, field: str) -> str:
    """An event type read from a payload or header; 422 naming ``field`` if it is unusable."""
    if not isinstance(value, str) or not value:
        raise ApiError(422, "invalid_payload", f"{field}: must be a non-empty string")
    if len(value) > MAX_EVENT_TYPE:
        raise ApiError(422, "invalid_payload", f"{field}: at most {MAX_EVENT_TYPE} characters")
    if value.startswith("baton."):
        raise ApiError(
            422,
            "invalid_payload",
            f"{field}: {value!r} is one of Baton's own event types; a webhook cannot send it",
        )
    return value
