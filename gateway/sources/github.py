"""GitHub: HMAC-SHA256 of the raw body in ``X-Hub-Signature-256``; the type is
``github.{X-GitHub-Event}.{action}`` (``github.{event}`` when the payload has no action)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from pydantic import SecretStr

from gateway._errors import ApiError, unauthorized
from gateway.sources._base import (
    Delivery,
    WebhookSource,
    checked_event_type,
    delivery_id,
    parse_payload,
)

_WORD = re.compile(r"^[a-z0-9_]{1,60}$")


class GitHubSource(WebhookSource):
    name = "github"

    def __init__(self, secrets: Sequence[SecretStr]) -> None:
        if not secrets:
            raise ValueError("the github source needs at least one secret")
        self._keys = [secret.get_secret_value().encode() for secret in secrets]

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        given = headers.get("x-hub-signature-256", "")
        if not given:
            raise unauthorized(
                "no X-Hub-Signature-256 header; give the webhook a secret in GitHub so it signs "
                "each delivery",
                "missing_signature",
            )
        if not given.startswith("sha256="):
            raise unauthorized(
                "X-Hub-Signature-256 must look like sha256=<64 hex digits>", "bad_signature"
            )
        signature = given.removeprefix("sha256=").encode()
        matched = False
        # Every secret is tried (no early exit), each comparison in constant time.
        for key in self._keys:
            expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
            matched |= hmac.compare_digest(expected, signature)
        if not matched:
            raise unauthorized(
                "X-Hub-Signature-256 does not match the body under any configured secret; check "
                "BATON_GITHUB_WEBHOOK_SECRETS and that nothing re-encoded the body on the way",
                "bad_signature",
            )

    def delivery(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        identifier = delivery_id(headers, "x-github-delivery")
        event = headers.get("x-github-event", "")
        if not _WORD.match(event):
            raise ApiError(
                400,
                "bad_header",
                f"X-GitHub-Event {event!r} must be a GitHub event name such as 'issues'",
            )
        payload = parse_payload(body)
        action = payload.get("action")
        if action is None:
            event_type = f"github.{event}"
        elif isinstance(action, str) and _WORD.match(action):
            event_type = f"github.{event}.{action}"
        else:
            raise ApiError(
                422, "invalid_payload", f"action: {action!r} is not a GitHub action name"
            )
        return Delivery(self.name, identifier, checked_event_type(event_type, "type"), payload)
