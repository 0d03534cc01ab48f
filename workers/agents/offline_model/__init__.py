"""Baton's offline model: a deterministic, OpenAI-compatible chat model served over real HTTP.

Tests and the demo point the real `openai` client at it, so no test ever calls a real model:

    with start_in_thread(OfflineModelConfig()) as model:
        client = OpenAI(base_url=model.base_url, api_key="offline")

It answers in one of two modes: by default it calls every offered tool once, then answers
(JSON valid against `response_format`, or text summarising the tool results); given a
`Cassette`, it replays recorded responses in order and fails loudly on any other request.
Latency and faults (429 with Retry-After, 5xx, permanent 4xx, timeouts) are injected through
`OfflineModelConfig` and `POST /_offline/faults`.

This is the lowest layer of `workers`: it imports only the standard library, pydantic, FastAPI
and uvicorn.
"""

from ._app import create_app
from ._cassette import Cassette, CassetteError, Exchange
from ._config import Fault, OfflineModelConfig, OfflineModelStats
from ._server import OfflineModelHandle, serve, start_in_thread

__all__ = [
    # Recorded exchanges, replayed in order
    "Cassette",
    "CassetteError",
    "Exchange",
    # Faults to inject
    "Fault",
    # Configuring and running a server
    "OfflineModelConfig",
    "OfflineModelHandle",
    "OfflineModelStats",
    "create_app",
    "serve",
    "start_in_thread",
]
