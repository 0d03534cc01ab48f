"""The FastAPI application: webhooks, the run API, health and metrics."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway._config import GatewayConfig
from gateway._errors import error_response, install_error_handlers
from gateway._health import health_router
from gateway._intake import Intake
from gateway._metrics import LatencyMiddleware, Metrics
from gateway._runs_api import runs_router
from gateway._tracing import TracingMiddleware
from gateway._webhooks import ReceiveWebhooks, WebhookReceiver, webhook_router
from gateway.sources import configured_sources
from store import InvalidState, NotFound, StoreUnavailable
from workers import Runtime
from workers._tracing import configure_tracing


def create_app(runtime: Runtime, config: GatewayConfig | None = None) -> FastAPI:
    """The gateway for ``runtime`` (its store, broker and the actors imported in this process)."""
    config = config or GatewayConfig()
    sources = configured_sources(config)
    intake = Intake(runtime)
    metrics = Metrics(runtime.store)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # What is alive once the app is built (modules, models, routes: some 200,000 objects)
        # lives as long as the process: a full collection that walked it all paused every
        # request for about 100 ms. Frozen, collections walk only what requests allocate.
        gc.collect()
        gc.freeze()
        await intake.start()
        try:
            yield
        finally:
            # Runs handed over are created and their messages sent before the process exits;
            # any message that is not, the relay sends from the outbox.
            await intake.stop()
            gc.unfreeze()

    app = FastAPI(
        title="Baton gateway",
        version="1",
        summary="Webhooks in, durable agent runs out.",
        lifespan=lifespan,
        # TracingMiddleware makes the request span instead of FastAPI's own: a webhook's span
        # is always a root, and it is the parent of the run's first steps.
        # Our own /metrics count requests; FastAPI's would look for a provider per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    _map_store_errors(app)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    configure_tracing("baton-gateway")
    app.add_middleware(TracingMiddleware)
    receiver = WebhookReceiver(intake, sources, config, metrics)
    # Outermost of ours: deliveries are the hot path, answered before the other middleware
    # and FastAPI's routing (the receiver traces and times them the same way).
    app.add_middleware(ReceiveWebhooks, receiver=receiver)
    app.include_router(webhook_router(receiver))
    app.include_router(runs_router(intake, config))
    app.include_router(health_router(runtime, config, metrics, intake.writer))
    app.state.intake = intake
    app.state.metrics = metrics
    return app


def _map_store_errors(app: FastAPI) -> None:
    async def not_found(_request: Request, error: Exception) -> JSONResponse:
        return error_response(404, "not_found", str(error))

    async def invalid_state(_request: Request, error: Exception) -> JSONResponse:
        return error_response(409, "conflict", str(error))

    async def unavailable(_request: Request, error: Exception) -> JSONResponse:
        return error_response(503, "unavailable", f"{error}; retry once it is back")

    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(InvalidState, invalid_state)
    app.add_exception_handler(StoreUnavailable, unavailable)
