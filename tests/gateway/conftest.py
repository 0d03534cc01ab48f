"""The gateway on a real port over a real Valkey and store, and senders that sign like GitHub
and like Standard Webhooks senders do."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook
from starlette.types import ASGIApp

import tests.gateway.actors  # noqa: F401  (the actors the deliveries are for)
from gateway import GatewayConfig, ServerThread, create_app
from store import Store
from tests.conftest import FAST
from workers import Runtime

FIXTURES = Path("/work/shared/fixtures/github")
TOKEN = "test-api-token"
GITHUB_SECRET = "github-secret-for-tests"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-secret-for-tests-0123456").decode()


@dataclass
class Gateway:
    url: str
    server: ServerThread
    runtime: Runtime
    app: Any = None

    def client(
        self, token: str | None = TOKEN, headers: dict[str, str] | None = None
    ) -> httpx.Client:
        """An HTTP client for this gateway, sending ``Authorization: Bearer token`` if given."""
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers={**sent, **(headers or {})}, timeout=30)


def config(**overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = {
        "api_token": SecretStr(TOKEN),
        # The first secret is an old one still accepted while rotating.
        "github_secrets": [SecretStr("an-older-github-secret"), SecretStr(GITHUB_SECRET)],
        "standard_secrets": [SecretStr(STANDARD_SECRET)],
        **overrides,
    }
    return GatewayConfig(**values)


@pytest.fixture
def start_gateway(store: Store, redis_url: str) -> Iterator[Callable[..., Gateway]]:
    """Factory: the gateway app on uvicorn on a free 127.0.0.1 port, stopped after the test."""
    started: list[ServerThread] = []

    def start(
        gateway_config: GatewayConfig | None = None,
        *,
        redis: str | None = None,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> Gateway:
        runtime = Runtime(store, redis or redis_url, FAST)
        app = create_app(runtime, gateway_config or config())
        server = ServerThread(wrap(app) if wrap else app)
        server.start()
        started.append(server)
        return Gateway(server.url, server, runtime, app)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()


# -- senders -------------------------------------------------------------------------------


def github_fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def github_headers(
    body: bytes, event: str, *, delivery: str | None = None, secret: str = GITHUB_SECRET
) -> dict[str, str]:
    """The headers GitHub sends: a plain HMAC-SHA256 of the body as it is."""
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={signature}",
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }


def standard_body(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": event_type, "timestamp": datetime.now(UTC).isoformat(), "data": data}
    ).encode()


def standard_headers(
    body: bytes,
    *,
    message_id: str | None = None,
    secret: str = STANDARD_SECRET,
    offset_seconds: float = 0,
) -> dict[str, str]:
    """Headers signed by the ``standardwebhooks`` library itself."""
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    # Round away from now, so the whole-second stamp is at least offset_seconds off.
    shifted = time.time() + offset_seconds
    stamp = math.ceil(shifted) if offset_seconds > 0 else math.floor(shifted)
    moment = datetime.fromtimestamp(stamp, tz=UTC)
    signature = Webhook(secret).sign(message_id, moment, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


# -- what the store holds ------------------------------------------------------------------


def count(store: Store, table: str) -> int:
    with store.read() as connection:
        return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0)


def nothing_stored(store: Store) -> bool:
    return all(count(store, table) == 0 for table in ("runs", "events", "outbox", "deliveries"))
