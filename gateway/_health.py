"""``/healthz`` (the process answers), ``/readyz`` (store, Redis and the run writer answer),
``/metrics``."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway._auth import bearer_auth
from gateway._config import GatewayConfig
from gateway._errors import ApiError, responses
from gateway._metrics import Metrics
from gateway._models import Health
from gateway._writer_client import RunWriter
from workers import Runtime


def health_router(
    runtime: Runtime, config: GatewayConfig, metrics: Metrics, writer: RunWriter
) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The gateway process is up (no token needed, for probes)."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Health, responses=responses(503))
    async def readyz() -> Health:
        """The store and Redis both answer, and the run writer runs (no token needed, for
        probes)."""
        if not writer.running:
            raise ApiError(503, "not_ready", "the gateway's run writer is not running")
        problem = await anyio.to_thread.run_sync(_unreachable, runtime)
        if problem is not None:
            raise ApiError(503, "not_ready", problem)
        return Health(status="ready")

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=[Depends(bearer_auth(config.api_token))],
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **responses(401),
        },
    )
    def metrics_text() -> PlainTextResponse:
        """Runs by status, webhook deliveries by source and outcome, request latency; and the
        process-wide runtime metrics (steps, model tokens and cost, dead letters)."""
        body = generate_latest(metrics.registry) + generate_latest(REGISTRY)
        return PlainTextResponse(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return router


def _unreachable(runtime: Runtime) -> str | None:
    try:
        runtime.store.ping()
    except Exception as error:
        return f"the store does not answer: {error}"
    try:
        runtime.broker.client.ping()
    except Exception as error:
        return f"Redis does not answer: {error}; start it or fix BATON_REDIS_URL"
    return None
