"""The request span: a SERVER span per HTTP request, the root of the runs it starts.

A webhook's span is always a root: a sender's ``traceparent`` is not trusted to choose the
trace. The run API (bearer token) continues the caller's trace when it sends one. Probes and
``/metrics`` are not traced.
"""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers._tracing import tracer

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
_PROPAGATED = (b"traceparent", b"tracestate")


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in _UNTRACED:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        parent = None
        if not path.startswith("/webhooks/"):
            carrier = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in scope.get("headers", ())
                if name in _PROPAGATED
            }
            parent = propagate.extract(carrier) if carrier else None
        client = scope.get("client")
        status = 500
        with tracer().start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scope.get("scheme", "http"),
                **({"client.address": client[0]} if client else {}),
            },
        ) as span:

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
