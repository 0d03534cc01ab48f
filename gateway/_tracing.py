"""The request span: a SERVER span per HTTP request, the root of the runs it starts.

A webhook's span is always a root: a sender's ``traceparent`` is not trusted to choose the
trace. The run API (bearer token) continues the caller's trace when it sends one. Probes and
``/metrics`` are not traced.
"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers._tracing import tracer

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
_PROPAGATED = (b"traceparent", b"tracestate")
# An empty context: a span started in it is a root, whatever is current.
_NO_PARENT = Context()


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
        status = 500
        with trace.use_span(
            start_server_span(scope, method, path, parent=parent), end_on_exit=True
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
                note_status(span, status)


def start_server_span(
    scope: Scope,
    method: str,
    path: str,
    *,
    route: str | None = None,
    parent: Context | None = None,
) -> Span:
    """The request's SERVER span, started (the caller ends it); a root unless ``parent``."""
    client = scope.get("client")
    attributes = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scope.get("scheme", "http"),
    }
    if client:
        attributes["client.address"] = client[0]
    if route:
        attributes["http.route"] = route
    return tracer().start_span(
        f"{method} {route}" if route else method,
        context=parent if parent is not None else _NO_PARENT,
        kind=SpanKind.SERVER,
        attributes=attributes,
    )


def note_status(span: Span, status: int) -> None:
    """Record the answer's status on the request span; a 5xx marks it failed."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
