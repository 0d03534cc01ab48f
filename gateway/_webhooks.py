"""``POST /webhooks/{source}``: cap, verify, parse, dedupe, commit, answer 202.

Nothing more happens before the answer: the run's messages are published after it, and a
rejected delivery stores nothing.

Deliveries are the gateway's hot path, so ``ReceiveWebhooks`` hands them to the receiver
ahead of the other middleware, FastAPI's routing and dependency injection; the receiver
makes the same request span (the root of the run's trace) and latency observation the
middleware makes for every other request. ``webhook_router`` declares the endpoint for
/openapi.json (and answers its other methods with 405); a request that reaches it all the
same is handed to the receiver."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from fastapi import APIRouter
from fastapi.responses import Response
from opentelemetry import trace
from opentelemetry.trace import Span
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._body import read_capped_body
from gateway._config import GatewayConfig
from gateway._errors import ApiError, responses
from gateway._intake import Intake, Outcome
from gateway._metrics import Metrics
from gateway._models import DeliveryAnswer
from gateway._tracing import note_status, start_server_span
from gateway.sources import SECRET_VARIABLES, WebhookSource
from store import StoreUnavailable

_logger = logging.getLogger("baton.gateway")
PREFIX = "/webhooks/"
ROUTE = "/webhooks/{source}"
_IGNORED = (
    "no actor subscribes to {type!r}; the delivery is recorded and nothing runs. To handle "
    "it, subscribe an actor to it and name its module in BATON_MODULES"
)
_JSON = (b"content-type", b"application/json")


class WebhookReceiver:
    """Answers deliveries: ``answer`` one, given its source, as an ASGI app would."""

    def __init__(
        self,
        intake: Intake,
        sources: dict[str, WebhookSource],
        config: GatewayConfig,
        metrics: Metrics,
    ) -> None:
        self.intake = intake
        self.sources = sources
        self.config = config
        self.metrics = metrics
        # The documented route (set by webhook_router), as routing would have found it.
        self.route: object = None
        # Labelled metrics, looked up once per label set.
        self._counters: dict[tuple[str, str], Counter] = {}
        self._timers: dict[int, Histogram] = {}

    async def traced(self, source: str, scope: Scope, receive: Receive, send: Send) -> None:
        """``answer``, in a request span of its own (the root of the run's trace) and timed,
        as TracingMiddleware and LatencyMiddleware do for every other request."""
        started = time.perf_counter()
        scope["route"] = self.route
        span = start_server_span(scope, "POST", scope["path"], route=ROUTE)
        status = 500
        try:
            status = await self.answer(source, scope, receive, send, span)
        finally:
            note_status(span, status)
            span.end()
            timer = self._timers.get(status)
            if timer is None:
                timer = self._timers[status] = self.metrics.request_seconds.labels(
                    "POST", ROUTE, str(status)
                )
            timer.observe(time.perf_counter() - started)

    async def answer(
        self, source: str, scope: Scope, receive: Receive, send: Send, span: Span | None = None
    ) -> int:
        """Answer one delivery for ``source``: its run's id, or an error that says why not.
        The run's steps are children of ``span``, else of the current span."""
        headers: dict[str, str] | None = None
        try:
            status, answer = await self._deliver(
                source, scope, receive, span or trace.get_current_span()
            )
        except ApiError as error:
            status, headers = error.status, error.headers
            answer = {"error": error.error, "detail": error.detail}
        except StoreUnavailable as error:
            status = 503
            answer = {"error": "unavailable", "detail": f"{error}; retry once it is back"}
        except Exception as error:
            _logger.error("POST %s failed", scope["path"], exc_info=error)
            status = 500
            answer = {
                "error": "internal_error",
                "detail": "the gateway failed on this request; see its log and retry",
            }
        body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        raw = [(b"content-length", str(len(body)).encode()), _JSON]
        for name, value in (headers or {}).items():
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _deliver(
        self, source: str, scope: Scope, receive: Receive, span: Span
    ) -> tuple[int, dict[str, object]]:
        handler = self.sources.get(source)
        if handler is None:
            self._count("unknown", "unknown_source")
            raise ApiError(
                404,
                "unknown_source",
                f"no webhook source {source!r} is configured here; configured: "
                f"{', '.join(sorted(self.sources)) or 'none'}. Sources are github "
                f"({SECRET_VARIABLES['github']}) and standard "
                f"({SECRET_VARIABLES['standard']})",
                headers={"Connection": "close"},
            )
        try:
            headers = _headers(scope)
            body = await read_capped_body(
                receive, headers.get("content-length"), self.config.max_bytes(source)
            )
            handler.verify(headers, body)
            delivery = handler.delivery(headers, body)
            outcome = await self.intake.deliver(delivery, span)
        except ApiError as error:
            self._count(source, error.error)
            raise
        except Exception:
            # The store or the gateway failed (503 or 500): the sender should retry.
            self._count(source, "failed")
            raise
        self._count(source, outcome.status)
        return (200 if outcome.status == "duplicate" else 202), _answer(
            outcome, delivery.event_type, delivery.delivery_id
        )

    def _count(self, source: str, outcome: str) -> None:
        counter = self._counters.get((source, outcome))
        if counter is None:
            counter = self._counters[source, outcome] = self.metrics.deliveries.labels(
                source, outcome
            )
        counter.inc()


def _headers(scope: Scope) -> Mapping[str, str]:
    """The request's headers by lower-case name; a repeated header's first value counts."""
    headers: dict[str, str] = {}
    for name, value in reversed(scope["headers"]):
        headers[name.decode("latin-1")] = value.decode("latin-1")
    return headers


def _answer(outcome: Outcome, event_type: str, delivery_id: str) -> dict[str, object]:
    """A ``DeliveryAnswer``, as JSON data."""
    return {
        "status": outcome.status,
        "run_id": outcome.run_id,
        "event_type": event_type,
        "delivery_id": delivery_id,
        "detail": _IGNORED.format(type=event_type) if outcome.status == "ignored" else None,
    }


def webhook_router(receiver: WebhookReceiver) -> APIRouter:
    """The documented webhook route; ``ReceiveWebhooks`` hands its POSTs to ``receiver``
    before routing, and a request that gets here all the same goes to it too."""
    router = APIRouter(tags=["webhooks"])

    @router.post(
        ROUTE,
        status_code=202,
        summary="Receive a signed webhook delivery",
        response_model=DeliveryAnswer,
        responses={
            200: {"model": DeliveryAnswer, "description": "A repeat of an accepted delivery"},
            **responses(400, 401, 404, 413, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The sender's JSON payload, exactly as signed",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def receive_webhook(source: str) -> Response:
        """Verify a delivery from ``github`` (X-Hub-Signature-256) or ``standard`` (Standard
        Webhooks) and start its run: 202 with the run id; a repeated delivery answers 200
        with the run it started; a type no actor subscribes to is recorded and ignored."""
        return _Forwarded(receiver, source)

    receiver.route = router.routes[0]
    return router


class ReceiveWebhooks:
    """ASGI middleware, outermost: hands ``POST /webhooks/{source}`` to the receiver inside
    its request span and latency timer, and anything else on to the app."""

    def __init__(self, app: ASGIApp, receiver: WebhookReceiver) -> None:
        self.app = app
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            source = path[len(PREFIX) :]
            # The route's {source} is one non-empty path segment.
            if path.startswith(PREFIX) and source and "/" not in source:
                await self.receiver.traced(source, scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Forwarded(Response):
    """A request the router reached: answered by the receiver, as it answers the others."""

    def __init__(self, receiver: WebhookReceiver, source: str) -> None:
        super().__init__()
        self.receiver = receiver
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.receiver.answer(self.source, scope, receive, send)
