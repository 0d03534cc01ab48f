"""Standard Webhooks (standardwebhooks.com): ``webhook-id``, ``webhook-timestamp`` (within 5
minutes) and ``webhook-signature``, verified by the ``standardwebhooks`` library.

The payload is the spec's envelope ``{"type", "timestamp", "data"}``: the event type is
``type`` and the event's data is the ``data`` object.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from gateway._errors import ApiError, unauthorized
from gateway.sources._base import (
    Delivery,
    WebhookSource,
    checked_event_type,
    delivery_id,
    parse_payload,
)

TOLERANCE_SECONDS = 300
_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class StandardSource(WebhookSource):
    name = "standard"

    def __init__(self, secrets: Sequence[SecretStr]) -> None:
        if not secrets:
            raise ValueError("the standard source needs at least one secret")
        self._verifiers = []
        for position, secret in enumerate(secrets, start=1):
            try:
                self._verifiers.append(Webhook(secret.get_secret_value()))
            except Exception:
                raise ValueError(
                    f"secret #{position} of BATON_STANDARD_WEBHOOK_SECRETS is not a base64 "
                    "secret such as whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                ) from None

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        for header in _HEADERS:
            if not headers.get(header):
                raise unauthorized(
                    f"no {header} header; Standard Webhooks deliveries carry {', '.join(_HEADERS)}",
                    "missing_signature",
                )
        stamp = headers["webhook-timestamp"]
        if not stamp.isdigit():
            raise unauthorized(
                f"webhook-timestamp {stamp!r} must be whole UNIX seconds", "bad_signature"
            )
        # The header has whole seconds; comparing with a whole-second clock keeps a stamp
        # 301 s off outside a 300 s tolerance whatever fraction of a second has passed.
        drift = int(stamp) - int(time.time())
        if abs(drift) > TOLERANCE_SECONDS:
            when = "in the future" if drift > 0 else "in the past"
            raise unauthorized(
                f"webhook-timestamp is {abs(drift):.0f} s {when}, beyond the "
                f"{TOLERANCE_SECONDS} s tolerance; check the sender's clock, and do not "
                "replay old deliveries",
                "stale_timestamp",
            )
        given = {header: headers[header] for header in _HEADERS}
        matched = False
        for verifier in self._verifiers:
            try:
                verifier.verify(body, given, json_parse=False)
                matched = True
            except Exception:
                # WebhookVerificationError, and the library's ValueError / binascii.Error /
                # UnicodeDecodeError on a malformed header or body: all are "not signed by us".
                continue
        if not matched:
            raise unauthorized(
                "webhook-signature does not match the body under any configured secret; check "
                "BATON_STANDARD_WEBHOOK_SECRETS and that nothing re-encoded the body",
                "bad_signature",
            )

    def delivery(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        identifier = delivery_id(headers, "webhook-id")
        payload = parse_payload(body)
        event_type = checked_event_type(payload.get("type"), "type")
        data = payload.get("data")
        if not isinstance(data, dict):
            raise ApiError(
                422,
                "invalid_payload",
                "data: must be a JSON object; Standard Webhooks payloads are "
                '{"type": ..., "timestamp": ..., "data": {...}}',
            )
        return Delivery(self.name, identifier, event_type, data)
