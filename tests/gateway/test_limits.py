"""Bodies over the limit are refused while reading, never buffered; odd requests get the
status that says what is wrong, and store nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import GatewayConfig
from store import Store
from tests.gateway.conftest import (
    Gateway,
    config,
    github_fixture,
    github_headers,
    nothing_stored,
    standard_headers,
)

MiB = 1 << 20


class CountBodyBytes:
    """Wraps the app: counts the body bytes the server handed it, i.e. what it read."""

    def __init__(self) -> None:
        self.received = 0

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def counted_app(scope: Scope, receive: Receive, send: Send) -> None:
            async def counted() -> Message:
                message = await receive()
                self.received += len(message.get("body", b""))
                return message

            await app(scope, counted, send)

        return counted_app


def test_a_50_mib_stream_is_refused_after_the_limit_not_buffered(
    start_gateway: Callable[..., Gateway], store: Store
) -> None:
    # Given a gateway with the default 1 MiB limit, counting what it reads
    counter = CountBodyBytes()
    gateway = start_gateway(wrap=counter)
    yielded = 0

    def fifty_mib() -> Iterator[bytes]:
        nonlocal yielded
        chunk = b"x" * (64 * 1024)
        for _ in range(50 * 16):
            yielded += len(chunk)
            yield chunk

    # When a client streams 50 MiB without a Content-Length (chunked)
    headers = github_headers(b"", "issues")
    started = time.monotonic()
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answer = client.post("/webhooks/github", content=fifty_mib(), headers=headers)
    # Then it answers 413 and says what to do, having read about 1 MiB and no more
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "payload_too_large"
    assert "BATON_WEBHOOK_MAX_BYTES" in answer.json()["detail"]
    # (uvicorn hands the app what one socket read brought, up to a few hundred KiB at a time)
    assert MiB < counter.received <= 1.5 * MiB
    # And the client was cut off long before it sent everything (kernel buffers aside)
    print(f"server read {counter.received / MiB:.2f} MiB; client sent {yielded / MiB:.2f} MiB")
    assert yielded < 16 * MiB, f"the client sent {yielded / MiB:.1f} MiB"
    assert time.monotonic() - started < 10
    assert nothing_stored(store)


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    start_gateway: Callable[..., Gateway], store: Store
) -> None:
    # Given a gateway counting what it reads
    counter = CountBodyBytes()
    gateway = start_gateway(wrap=counter)
    body = b"{" + b" " * (2 * MiB) + b"}"
    # When a client sends 2 MiB with Content-Length
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answer = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issues")
        )
    # Then it is refused on the header alone
    assert answer.status_code == 413, answer.text
    assert counter.received == 0
    assert nothing_stored(store)


def test_the_limit_is_per_source(start_gateway: Callable[..., Gateway], store: Store) -> None:
    # Given a 1 KiB limit for github only
    gateway = start_gateway(config(max_bytes_by_source={"github": 1024}))
    body = github_fixture("issues.labeled")
    assert len(body) > 1024
    # When a larger GitHub delivery comes
    with gateway.client(token=None) as client:
        answer = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issues")
        )
    # Then it is refused, while the standard source keeps the default limit
    assert answer.status_code == 413
    assert GatewayConfig(max_bytes_by_source={"github": 1024}).max_bytes("standard") == MiB
    assert nothing_stored(store)


def test_malformed_json_after_a_valid_signature_is_400(gateway: Gateway, store: Store) -> None:
    body = b'{"action": "opened", "issue": '
    with gateway.client(token=None) as client:
        github = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issues")
        )
        standard = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    for answer in (github, standard):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "malformed_json"
    assert nothing_stored(store)


def test_json_that_is_not_an_object_is_422(gateway: Gateway, store: Store) -> None:
    body = json.dumps([1, 2, 3]).encode()
    with gateway.client(token=None) as client:
        answer = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issues")
        )
    assert answer.status_code == 422
    assert nothing_stored(store)


def test_an_unknown_source_is_404(gateway: Gateway, store: Store) -> None:
    body = github_fixture("issues.labeled")
    with gateway.client(token=None) as client:
        answer = client.post(
            "/webhooks/gitlab", content=body, headers=github_headers(body, "issues")
        )
    assert answer.status_code == 404
    assert answer.json()["error"] == "unknown_source"
    assert "github" in answer.json()["detail"] and "standard" in answer.json()["detail"]
    assert nothing_stored(store)


def test_a_source_without_secrets_is_not_listening(
    start_gateway: Callable[..., Gateway], store: Store
) -> None:
    gateway = start_gateway(config(standard_secrets=[]))
    body = b"{}"
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    assert answer.status_code == 404
    assert "BATON_STANDARD_WEBHOOK_SECRETS" in answer.json()["detail"]
    assert nothing_stored(store)


def test_an_unknown_route_and_a_wrong_method_answer_json(gateway: Gateway) -> None:
    with gateway.client() as client:
        missing = client.get("/nowhere")
        wrong = client.get("/webhooks/github")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
