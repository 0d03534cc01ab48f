"""What a model call puts on the wire besides its body: nothing that would let a caching
proxy answer a replayed step from an earlier attempt."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from aiohttp import web

from workers.agents._model import ModelRequest, _retry_after_seconds, client_for, complete

_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4.1-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello"},
            "finish_reason": "stop",
        }
    ],
}


def test_a_model_call_sends_no_idempotency_key_header() -> None:
    # Given an endpoint that notes the headers of each request it answers
    seen: list[dict[str, str]] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        return web.json_response(_ANSWER)

    async def scenario() -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            client = client_for(f"http://127.0.0.1:{port}/v1", "key", timeout=10, max_retries=0)
            request = ModelRequest(
                {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}
            )
            # When a model call is made with the step's idempotency key
            answer = await complete(client, request, idempotency_key="step-1-abcdef")
            await client.close()
            return answer
        finally:
            await runner.cleanup()

    answer = asyncio.run(scenario())
    # Then the answer comes back, and the key stayed with us: the SDK never sends it to
    # OpenAI-compatible endpoints (were it sent, a proxy honouring it could serve a replay
    # of the step the earlier attempt's answer)
    assert answer["choices"][0]["message"]["content"] == "hello"
    assert len(seen) == 1
    assert "idempotency-key" not in seen[0]
    assert "step-1-abcdef" not in seen[0].values()


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "inf", "retry-after": "2"}, 2.0),
        ({}, None),
    ],
)
def test_the_wait_a_rate_limited_response_asks_for(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert _retry_after_seconds(headers) == seconds


def test_a_retry_after_given_as_a_date_is_the_time_until_it() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    wait = _retry_after_seconds({"retry-after": when})
    assert wait is not None and 115 <= wait <= 120
