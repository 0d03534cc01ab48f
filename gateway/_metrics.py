"""Prometheus metrics: runs by status (read from the store at scrape time), webhook
deliveries by source and outcome, and request latency by route."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway._records import runs_by_status
from store import Store, StoreError

_logger = logging.getLogger("baton.gateway")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """One registry per app, so several gateways in one process do not collide."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "baton_webhook_deliveries",
            "Webhook deliveries by source and outcome (accepted, duplicate, ignored, or the "
            "error code of a refusal)",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "baton_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_RunsByStatus(store))


class _RunsByStatus(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("baton_runs", "Runs in the store by status", labels=["status"])
        try:
            counts = runs_by_status(self.store)
        except StoreError as error:
            _logger.warning("cannot count runs for /metrics: %s", error)
            return
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


class LatencyMiddleware:
    """Times every HTTP request; labels by the matched route's template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.histogram = metrics.request_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.histogram.labels(method, route, str(status)).observe(time.perf_counter() - started)
