"""OpenTelemetry: one trace per run (DESIGN.md invariant 9).

Spans, and where they sit:

- ``start_run {type}`` (PRODUCER) is the root of a run started outside a request (the CLI, a
  test); a run started by the gateway has the request's SERVER span as its root instead;
- ``step {actor}`` (CONSUMER) is one attempt of one step, parented by the span that caused
  it: the root for the trigger's steps, else the attempt of the step that emitted its event.
  Its span id is derived from the step id and the attempt (``store._ids.attempt_span_id``),
  which is how the store names a new step's parent before the child ever runs. A retry or an
  in-place replay links to the attempt before it. Only a claimed step gets a span: a
  redelivered message of a step that already succeeded records nothing;
- ``invoke_agent {agent}`` (INTERNAL) is one turn of an agent: a model-call step. The loop
  is many steps on many workers, so no single span can cover it; the run's trace is the agent
  end to end, and ``gen_ai.conversation.id`` (the loop id) ties its turns together;
- ``chat {model}`` (CLIENT) is a real model request, inside ``invoke_agent``; it alone carries
  token usage. A recorded response that a replay reuses makes no request and no span;
- ``execute_tool {tool}`` (INTERNAL) is a tool function's call, inside its tool-call step.

Message content (``gen_ai.input.messages``, ``gen_ai.output.messages`` and tool arguments
and results) is recorded only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is
true. Spans leave the process by OTLP over http/protobuf when ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``..._TRACES_ENDPOINT``) is set or ``OTEL_TRACES_EXPORTER=otlp``; the SDK reads every
other ``OTEL_*`` variable (service name, headers, sampler, batch sizes) itself.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from store import ClaimedStep, LeaseLost
from store._ids import attempt_span_id
from workers import _metrics

_logger = logging.getLogger("baton.tracing")

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_TRUE = frozenset({"true", "1", "yes", "on", "span_only", "span_and_event"})

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_capture_content = False

# The span id the next span started on this thread or task must take (a step attempt's).
_next_span_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "baton_next_span_id", default=None
)
_current_step: contextvars.ContextVar[_StepOutcome | None] = contextvars.ContextVar(
    "baton_current_step", default=None
)


class _StepSpanIds(RandomIdGenerator):
    """Random ids, except for a step attempt's span, whose id the store already named."""

    def generate_span_id(self) -> int:
        wanted = _next_span_id.get()
        return wanted if wanted is not None else super().generate_span_id()


# -- the provider ---------------------------------------------------------------------------


def configure_tracing(
    service_name: str = "baton",
    *,
    export: bool | None = None,
    capture_content: bool | None = None,
) -> trace.TracerProvider:
    """Install the SDK's TracerProvider once per process and return it.

    ``export`` and ``capture_content`` left at None follow OpenTelemetry's standard
    variables; ``capture_content`` given applies even once the provider is installed. A
    provider installed before Baton's (by the application) is kept; its spans then have
    random ids, so step spans are not joined to the steps they caused.
    """
    global _provider, _tracer, _capture_content
    with _lock:
        if _tracer is not None:
            if capture_content is not None:
                _capture_content = capture_content
            return _provider or trace.get_tracer_provider()
        variables = _standard_variables()
        _capture_content = (
            capture_content
            if capture_content is not None
            else variables["capture"].strip().lower() in _TRUE
        )
        installed = trace.get_tracer_provider()
        if isinstance(installed, TracerProvider):
            _provider, _tracer = installed, installed.get_tracer("baton")
            return installed
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": service_name}))
        provider = TracerProvider(resource=resource, id_generator=_StepSpanIds())
        exporter = _exporter(variables) if export is not False else None
        if exporter is None and export:
            exporter = _otlp_exporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider
        _tracer = provider.get_tracer("baton")
        return provider


def flush_tracing(timeout_ms: int = 10_000) -> None:
    """Export the spans still queued (a worker stopping); the SDK shuts down at exit."""
    provider = _provider
    if provider is not None and not provider.force_flush(timeout_ms):
        _logger.warning("spans not exported within %d ms were dropped", timeout_ms)


def _standard_variables() -> dict[str, str]:
    # OpenTelemetry's own variables, read where OpenTelemetry reads them: DESIGN.md leaves
    # OTEL_* to OpenTelemetry, and the SDK exposes no "is an exporter configured?" answer.
    environ = os.environ
    return {
        "exporter": environ.get("OTEL_TRACES_EXPORTER", ""),
        "endpoint": environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        "protocol": environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""),
        "capture": environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", ""),
    }


def _exporter(variables: Mapping[str, str]) -> SpanExporter | None:
    names = {name.strip().lower() for name in variables["exporter"].split(",") if name.strip()}
    if "none" in names:
        return None
    if "console" in names:
        return ConsoleSpanExporter()
    if "otlp" not in names and not variables["endpoint"]:
        return None
    protocol = variables["protocol"].strip().lower()
    if protocol and protocol != "http/protobuf":
        _logger.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not available; Baton exports http/protobuf "
            "(point the endpoint at the collector's HTTP port, usually 4318)",
            protocol,
        )
    return _otlp_exporter()


def _otlp_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracer() -> trace.Tracer:
    """Baton's tracer (a proxy until ``configure_tracing`` has run)."""
    return _tracer if _tracer is not None else trace.get_tracer("baton")


def _hex_ids(span_context: SpanContext) -> tuple[str, str]:
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


# -- runs -----------------------------------------------------------------------------------


@contextmanager
def run_trace(
    event_type: str, trace_id: str | None = None
) -> Iterator[tuple[str | None, str | None]]:
    """(trace id, root span id) for a run being created.

    Inside a span (the gateway's request) the run joins it; with only a ``trace_id`` (a
    caller's ``traceparent``) the run joins that trace; otherwise a ``start_run`` span is the
    run's root.
    """
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        current_trace, current_span = _hex_ids(current)
        if trace_id is None or trace_id == current_trace:
            yield current_trace, current_span
            return
    if trace_id is not None:
        yield trace_id, None
        return
    with tracer().start_as_current_span(
        f"start_run {event_type}",
        kind=SpanKind.PRODUCER,
        attributes={"baton.event.type": event_type},
    ) as span:
        yield _hex_ids(span.get_span_context())


# -- steps ----------------------------------------------------------------------------------


class _StepOutcome:
    __slots__ = ("error", "outcome", "step_id")

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id
        self.outcome = "succeeded"
        self.error: BaseException | None = None


def current_step_id() -> str | None:
    """The step whose attempt runs here (this thread or task, or one it handed work to)."""
    current = _current_step.get()
    return None if current is None else current.step_id


def note_step_outcome(outcome: str, error: BaseException | None = None) -> None:
    """Say how the step running here ended when it did not simply succeed."""
    current = _current_step.get()
    if current is not None:
        current.outcome = outcome
        current.error = error


@contextmanager
def observe_step(step: ClaimedStep, queue: str) -> Iterator[None]:
    """The ``step {actor}`` span of one claimed attempt, current while it runs, and its
    metrics (queue lag, duration, outcome)."""
    started = time.perf_counter()
    if step.available_at:
        _metrics.step_claimed(step.actor, time.time() - step.available_at)
    parent_trace, parent_span = _parent_of(step)
    span_id = attempt_span_id(step.id, step.attempt)
    links: Sequence[Link] = ()
    if step.attempt > 1:
        replayed = step.attempt_base > 0 and step.attempt == step.attempt_base + 1
        earlier = attempt_span_id(step.id, step.attempt - 1)
        links = [
            Link(
                SpanContext(parent_trace, int(earlier, 16), is_remote=True, trace_flags=_SAMPLED),
                {"baton.link.type": "replay" if replayed else "retry"},
            )
        ]
    parent = trace.set_span_in_context(
        trace.NonRecordingSpan(
            SpanContext(parent_trace, parent_span, is_remote=True, trace_flags=_SAMPLED)
        )
        if parent_span
        else trace.INVALID_SPAN
    )
    wanted = _next_span_id.set(int(span_id, 16))
    try:
        span = tracer().start_span(
            f"step {step.actor}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "dramatiq",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "baton.run.id": step.run_id,
                "baton.step.id": step.id,
                "baton.step.attempt": step.attempt,
                "baton.actor": step.actor,
                "baton.event.type": step.event.type,
            },
            links=links,
        )
    finally:
        _next_span_id.reset(wanted)
    outcome = _StepOutcome(step.id)
    noted = _current_step.set(outcome)
    attached = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    except LeaseLost as error:
        outcome.outcome, outcome.error = "lease_lost", error
        raise
    except BaseException as error:
        outcome.outcome, outcome.error = "error", error
        raise
    finally:
        otel_context.detach(attached)
        _current_step.reset(noted)
        span.set_attribute("baton.step.outcome", outcome.outcome)
        if outcome.error is not None:
            span.record_exception(outcome.error)
            span.set_attribute("error.type", type(outcome.error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(outcome.error)[:200]))
        span.end()
        _metrics.step_finished(step.actor, outcome.outcome, time.perf_counter() - started)


def _parent_of(step: ClaimedStep) -> tuple[int, int]:
    """(trace id, parent span id) from the step's stored traceparent; 0 for no parent."""
    parts = step.traceparent.split("-")
    try:
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            return int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        pass
    return int(step.trace_id, 16), 0


# -- GenAI ----------------------------------------------------------------------------------


@contextmanager
def agent_span(agent: str, model: str, conversation_id: str) -> Iterator[trace.Span]:
    """``invoke_agent {agent}``: one turn of the agent's loop (its model-call step)."""
    with tracer().start_as_current_span(
        f"invoke_agent {agent}",
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": "openai",
            "gen_ai.agent.name": agent,
            "gen_ai.request.model": model,
            "gen_ai.conversation.id": conversation_id,
        },
    ) as span:
        yield span


class ChatSpan:
    """The ``chat`` span of a model request; ``record`` adds what the response says."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def record(self, response: Mapping[str, Any]) -> None:
        span = self.span
        if not span.is_recording():
            return
        choices = response.get("choices") or []
        usage = response.get("usage") or {}
        attributes: dict[str, Any] = {
            "gen_ai.response.model": str(response.get("model") or ""),
            "gen_ai.response.id": str(response.get("id") or ""),
            "gen_ai.response.finish_reasons": [
                str(choice.get("finish_reason") or "") for choice in choices
            ],
            "gen_ai.usage.input_tokens": int(usage.get("prompt_tokens") or 0),
            "gen_ai.usage.output_tokens": int(usage.get("completion_tokens") or 0),
        }
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached:
            attributes["gen_ai.usage.cache_read.input_tokens"] = int(cached)
        if _capture_content:
            attributes["gen_ai.output.messages"] = json.dumps(
                [
                    {
                        **_message_parts(choice.get("message") or {}),
                        "finish_reason": choice.get("finish_reason"),
                    }
                    for choice in choices
                ]
            )
        span.set_attributes(attributes)


# Request settings recorded as gen_ai.request.*: OpenAI's name, the convention's name.
_REQUEST_SETTINGS = {
    "temperature": "temperature",
    "seed": "seed",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


@contextmanager
def chat_span(request: Mapping[str, Any], base_url: str | None = None) -> Iterator[ChatSpan]:
    """``chat {model}``: one request to an OpenAI-compatible endpoint."""
    model = str(request.get("model") or "")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
    }
    for name, convention in _REQUEST_SETTINGS.items():
        value = request.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[f"gen_ai.request.{convention}"] = value
    if base_url:
        address = urlsplit(base_url)
        if address.hostname:
            attributes["server.address"] = address.hostname
            attributes["server.port"] = address.port or (443 if address.scheme == "https" else 80)
    if _capture_content:
        attributes["gen_ai.input.messages"] = json.dumps(
            [_message_parts(message) for message in request.get("messages") or []]
        )
    with tracer().start_as_current_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        try:
            yield ChatSpan(span)
        except Exception as error:
            span.set_attribute("error.type", type(error).__qualname__)
            raise


class ToolSpan:
    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def record(self, result: Any) -> None:
        if _capture_content and self.span.is_recording():
            shown = result if isinstance(result, str) else json.dumps(result, default=str)
            self.span.set_attribute("gen_ai.tool.call.result", shown)


@contextmanager
def tool_span(name: str, call_id: str, arguments: str | None = None) -> Iterator[ToolSpan]:
    """``execute_tool {name}``: one call of a tool function."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
    }
    if _capture_content and arguments is not None:
        attributes["gen_ai.tool.call.arguments"] = arguments
    with tracer().start_as_current_span(
        f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes
    ) as span:
        try:
            yield ToolSpan(span)
        except Exception as error:
            span.set_attribute("error.type", type(error).__qualname__)
            raise


def _message_parts(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Chat Completions message in the GenAI conventions' shape: a role and its parts."""
    parts: list[dict[str, Any]] = []
    role = message.get("role") or "assistant"
    content = message.get("content")
    if role == "tool":
        parts.append(
            {
                "type": "tool_call_response",
                "id": message.get("tool_call_id"),
                "response": content,
            }
        )
    elif isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        for item in content:
            if isinstance(item, Mapping) and item.get("type") == "text":
                parts.append({"type": "text", "content": item.get("text")})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        with suppress(ValueError):
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": arguments,
            }
        )
    return {"role": role, "parts": parts}
