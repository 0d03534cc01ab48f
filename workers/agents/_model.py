"""Talking to the model: the real ``openai`` client, its retries, and what a response costs."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import openai

from events import BatonError
from store._agents import Usage
from workers._errors import RetryLater
from workers._runtime import Runtime, RuntimeConfig, on_loop_shutdown, on_loop_start
from workers.agents._agent import Agent, registered_agents
from workers.agents._pricing import DEFAULT_PRICES, Price, cost_usd

_logger = logging.getLogger("baton.agents")

# Errors a retry cannot fix: the request itself is refused.
_PERMANENT_STATUS = {400, 401, 403, 404, 409, 422}
# ... or, under a retryable status, the account: no quota left is a 429 that waiting won't cure.
_PERMANENT_CODES = {"insufficient_quota"}

# Per event loop (a client's connections belong to the loop that opened them), dropped with it.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


class ModelRefused(BatonError):
    """The provider refused the request (bad request, auth, unknown model): not retried."""


class ModelRateLimited(RetryLater):
    """The provider still refused for its rate limit after the client's own retries: the
    step is retried no sooner than its ``Retry-After`` (the client waits out only short ones)."""


class ModelAnswerUnreadable(BatonError):
    """The endpoint answered 2xx with a body that is not a chat completion: retried."""


class BudgetExceeded(BatonError):
    """The next model call would pass the agent's max_steps, max_tokens or max_cost_usd."""


class OutputInvalid(BatonError):
    """The model's final answer does not match the agent's output model, even after repair."""


def client_for(
    base_url: str | None, api_key: str | None, *, timeout: float, max_retries: int
) -> openai.AsyncOpenAI:
    """One client per endpoint and event loop: connections are pooled across model calls.

    The client's own retries handle 429 (honouring Retry-After), 5xx, timeouts and dropped
    connections with exponential backoff. Its HTTP transport is aiohttp (the SDK's
    ``DefaultAioHttpClient``): with hundreds of calls in flight, httpx's pool checks every
    open connection on each request, and the worker's one core pays for it (P5).
    """
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (base_url, api_key, timeout, max_retries)
    client: openai.AsyncOpenAI | None = clients.get(key)
    if client is None:
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "none",
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAioHttpClient(),
        )
        clients[key] = client
    return client


def client_of(agent: Agent, config: RuntimeConfig) -> openai.AsyncOpenAI:
    """The client ``agent`` calls its model with: its own endpoint, else the deployment's."""
    return client_for(
        agent.base_url or config.model_base_url,
        agent.api_key or config.model_api_key,
        timeout=config.model_timeout_seconds,
        max_retries=config.model_max_retries,
    )


async def open_clients(runtime: Runtime) -> None:
    """The client of each registered agent's endpoint, made before the first model call:
    making one loads the HTTP stack and the CA bundle, a tenth of a second of the loop."""
    for agent in registered_agents():
        try:
            client_of(agent, runtime.config)
        except Exception:
            # Its first model call makes it again, and fails with the reason if it must.
            _logger.warning("no client made ahead for agent %s", agent.name, exc_info=True)


async def close_clients() -> None:
    """Close the running loop's clients: their connections belong to it (worker shutdown)."""
    for client in _clients.pop(asyncio.get_running_loop(), {}).values():
        await client.close()


on_loop_start(open_clients)
on_loop_shutdown(close_clients)


async def complete(
    client: openai.AsyncOpenAI, request: ModelRequest, *, idempotency_key: str
) -> dict[str, Any]:
    """One chat completion as plain JSON; ModelRefused for errors a retry cannot fix.

    The request is already the JSON body and the response is kept as JSON, so it goes
    through the client's generic ``post`` (same retries, auth and errors) rather than the
    typed ``create``, which walks the body against its TypedDicts and builds pydantic models
    only for us to dump them again: about 0.6 ms of CPU per call.

    ``idempotency_key`` names the question (the step asking it and the request's hash), the
    same in every attempt. Without one the SDK makes a uuid4 for each request: a getrandom
    call that hands the GIL away on the event loop, for a key the OpenAI client never sends.
    """
    model = request.data["model"]
    try:
        raw = await client.post(
            "/chat/completions",
            content=request.body,
            cast_to=bytes,
            options={"idempotency_key": idempotency_key},
        )
    except openai.APIStatusError as error:
        if error.status_code in _PERMANENT_STATUS or error.code in _PERMANENT_CODES:
            raise ModelRefused(
                f"model {model!r} refused the request ({error.status_code}"
                f"{f', {error.code}' if error.code else ''}): {_provider_message(error)}"
            ) from None
        if error.status_code == 429:
            wait = _retry_after_seconds(error.response.headers)
            raise ModelRateLimited(
                f"model {model!r} is rate-limited (429): {_provider_message(error)}"
                + (f"; it asks to retry after {wait:g} s" if wait is not None else ""),
                retry_after_seconds=wait or 0.0,
            ) from None
        raise
    try:
        response = json.loads(raw)
    except ValueError:
        response = None
    if not isinstance(response, dict) or not response.get("choices"):
        raise ModelAnswerUnreadable(
            f"model {model!r} answered with something that is not a chat completion: {raw[:200]!r}"
        )
    return response


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, else ``Retry-After`` in seconds or
    as an HTTP date; None when it names none."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        with contextlib.suppress(ValueError):
            if math.isfinite(wait := float(milliseconds) / 1000):
                return max(wait, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        wait = float(value)
        return max(wait, 0.0) if math.isfinite(wait) else None
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    return None


def _provider_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return error.message


class ModelRequest:
    """A Chat Completions request, serialised once: the body sent, the text recorded and
    the hash that identifies it (same hash, same question) all come from one JSON text."""

    __slots__ = ("body", "data", "digest", "text")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        self.body = self.text.encode()
        self.digest = hashlib.sha256(self.body).hexdigest()


def usage_of(response: Mapping[str, Any], prices: Mapping[str, Price], *, asked: str) -> Usage:
    """What a response used and cost. It is priced as the model that answered (a dated
    snapshot takes its family's price) when that has a price, else as the model ``asked``
    for: an Azure deployment or a proxy's alias names the answering model its own way, and
    the budget check prices the agent's model, so its calls must not count as $0."""
    usage = response.get("usage") or {}
    input_tokens = int(usage.get("prompt_tokens") or 0)
    output_tokens = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        cost_usd=cost_usd(
            str(response.get("model") or ""),
            prices,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            asked=asked,
        ),
    )


def prices_with(overrides: Mapping[str, Any]) -> dict[str, Price]:
    """The default price table with the deployment's overrides (USD per million tokens);
    built once per overrides table (the runtime's config keeps one for its life)."""
    built = _price_tables.get(id(overrides))
    if built is not None and built[0] is overrides:
        return built[1]
    prices = dict(DEFAULT_PRICES)
    for model, price in overrides.items():
        prices[model] = price if isinstance(price, Price) else Price(**price)
    _price_tables[id(overrides)] = (overrides, prices)
    return prices


# id(overrides) -> (overrides, table): the overrides are kept, so the id is not reused.
_price_tables: dict[int, tuple[Mapping[str, Any], dict[str, Price]]] = {}


def assistant_message(response: Mapping[str, Any]) -> dict[str, Any]:
    """The response's message as it goes back into the conversation."""
    message = response["choices"][0]["message"]
    kept: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        kept["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": call["function"].get("arguments") or "{}",
                },
            }
            for call in message["tool_calls"]
        ]
    return kept
