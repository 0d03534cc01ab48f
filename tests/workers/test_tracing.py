"""One trace per run (DESIGN.md invariant 9): spans seen by an in-memory exporter and by a real
OTLP/HTTP receiver on loopback, from in-process workers, the gateway and `baton worker`
processes that are SIGKILLed mid-step."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from events import Event
from examples.chain import Start
from examples.triage import IssueOpened
from gateway import GatewayConfig, ServerThread, create_app
from store import Publish, Store, replay_failed_steps
from store._ids import attempt_span_id
from store._tables import events, runs, step_attempts, steps
from tests.actors import effects
from tests.actors.chaos import ChaosStep
from tests.conftest import REPO, wait_for_run, wait_until
from workers import Context, Runtime, Worker, actor
from workers._tracing import configure_tracing
from workers.agents.offline_model import OfflineModelConfig, OfflineModelHandle, start_in_thread

# -- actors of these tests -----------------------------------------------------------------------


class Flaky(Event, type="t_tracing.flaky"):
    """Fails its first ``failures`` attempts, then succeeds and is followed."""

    failures: int = 1


class Fragile(Event, type="t_tracing.fragile"):
    """Fails until an operator replays it, then succeeds and is followed."""


class Followed(Event, type="t_tracing.followed"):
    pass


class Pinged(Event, type="t_tracing.pinged"):
    n: int


@actor(on=Flaky, retries=3)
def flaky(event: Flaky, ctx: Context) -> Followed:
    if ctx.attempt <= event.failures:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return Followed()


@actor(on=Fragile, retries=0)
def fragile(event: Fragile, ctx: Context) -> Followed:
    if ctx.attempt_base == 0:
        raise RuntimeError("fails until replayed")
    return Followed()


@actor(on=Followed)
def follow(event: Followed, ctx: Context) -> None:
    return None


@actor(on=Pinged)
def ping(event: Pinged, ctx: Context) -> Followed:
    return Followed()


def issue_opened() -> Event:
    """GitHub's `issues.opened` payload, as the gateway hands it to the triage example."""
    payload = json.loads((REPO / "examples/payloads/github.issues.opened.json").read_text())
    return IssueOpened.model_validate(payload)


# -- spans as the tests see them, whichever way they were collected -----------------------------

_KINDS = {
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}


@dataclass
class Seen:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: SpanKind
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    error: bool = False
    service: str = ""


def from_sdk(span: ReadableSpan) -> Seen:
    context = span.get_span_context()
    assert context is not None
    return Seen(
        name=span.name,
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_id=f"{span.parent.span_id:016x}" if span.parent else None,
        kind=span.kind,
        attributes=dict(span.attributes or {}),
        links=[
            (
                f"{link.context.trace_id:032x}",
                f"{link.context.span_id:016x}",
                dict(link.attributes or {}),
            )
            for link in span.links
        ],
        error=span.status.status_code == StatusCode.ERROR,
        service=str(span.resource.attributes.get("service.name", "")),
    )


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def from_otlp(body: bytes) -> list[Seen]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    seen = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                seen.append(
                    Seen(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        kind=_KINDS[span.kind],
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[
                            (
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                {a.key: _value(a.value) for a in link.attributes},
                            )
                            for link in span.links
                        ],
                        error=span.status.code == 2,
                        service=str(resource.get("service.name", "")),
                    )
                )
    return seen


class Receiver:
    """A real OTLP/HTTP traces endpoint on 127.0.0.1: decodes what exporters POST."""

    def __init__(self) -> None:
        received: list[Seen] = []
        self.received = received
        self.lock = threading.Lock()
        lock = self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                spans = from_otlp(body)
                with lock:
                    received.extend(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[Seen]:
        with self.lock:
            return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Switch(SpanProcessor):
    """Forwards ended spans while this module's tests run; inert afterwards (a provider's
    processors cannot be removed)."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.on = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)


@pytest.fixture(scope="module")
def memory_exporter() -> Iterator[InMemorySpanExporter]:
    provider = configure_tracing()
    assert isinstance(provider, TracerProvider), "Baton's SDK provider should be installed"
    exporter = InMemorySpanExporter()
    switch = _Switch(SimpleSpanProcessor(exporter))
    provider.add_span_processor(switch)
    yield exporter
    switch.on = False
    exporter.clear()


@pytest.fixture
def spans(memory_exporter: InMemorySpanExporter) -> Iterator[Callable[[], list[Seen]]]:
    """Factory: every span ended in this process since the test began."""
    memory_exporter.clear()
    yield lambda: [from_sdk(span) for span in memory_exporter.get_finished_spans()]
    memory_exporter.clear()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.stop()


@pytest.fixture
def offline_model() -> Iterator[OfflineModelHandle]:
    handle = start_in_thread(OfflineModelConfig())
    yield handle
    handle.stop()


# -- what the store says the trace must be ---------------------------------------------------


@dataclass
class StoredStep:
    id: str
    actor: str
    traceparent: str
    cause_step_id: str | None
    attempts: list[tuple[int, str | None]]  # (attempt, outcome)


def stored_run(store: Store, run_id: str) -> tuple[str, list[StoredStep]]:
    with store.read() as connection:
        trace_id = connection.execute(select(runs.c.trace_id).where(runs.c.id == run_id)).scalar()
        rows = connection.execute(
            select(steps.c.id, steps.c.actor, steps.c.traceparent, events.c.cause_step_id)
            .join(events, events.c.id == steps.c.event_id)
            .where(steps.c.run_id == run_id)
        ).all()
        attempts = connection.execute(
            select(step_attempts.c.step_id, step_attempts.c.attempt, step_attempts.c.outcome)
            .where(step_attempts.c.run_id == run_id)
            .order_by(step_attempts.c.attempt)
        ).all()
    stored = [
        StoredStep(
            row.id,
            row.actor,
            row.traceparent,
            row.cause_step_id,
            [(a.attempt, a.outcome) for a in attempts if a.step_id == row.id],
        )
        for row in rows
    ]
    return str(trace_id), stored


def step_spans(seen: list[Seen], run_id: str) -> list[Seen]:
    return [s for s in seen if s.attributes.get("baton.run.id") == run_id]


def wait_for_step_spans(
    collect: Callable[[], list[Seen]], store: Store, run_id: str, timeout: float = 20.0
) -> list[Seen]:
    """Once the run has finished, every attempt that ended has its span (spans end just after
    their commit, so the last one can trail the run's status by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        _, stored = stored_run(store, run_id)
        ended = sum(1 for step in stored for _, outcome in step.attempts if outcome != "lost")
        seen = collect()
        if len(step_spans(seen, run_id)) >= ended or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def assert_one_trace_parented_by_cause(
    seen: list[Seen], store: Store, run_id: str, root_span_id: str | None
) -> dict[tuple[str, int], Seen]:
    """Every span of the run is in the run's trace; every step attempt's span has the id the
    store derives, and its parent is the attempt (or root span) that caused it."""
    trace_id, stored = stored_run(store, run_id)
    by_attempt: dict[tuple[str, int], Seen] = {}
    for span in step_spans(seen, run_id):
        key = (span.attributes["baton.step.id"], span.attributes["baton.step.attempt"])
        assert key not in by_attempt, f"two spans for step attempt {key}"
        by_attempt[key] = span
    committed = {}
    for step in stored:
        for attempt, outcome in step.attempts:
            if outcome == "succeeded":
                committed[step.id] = attempt
    for step in stored:
        for attempt, outcome in step.attempts:
            span = by_attempt.get((step.id, attempt))
            if outcome == "lost":
                assert span is None, "an attempt that died cannot have exported its span"
                continue
            assert span is not None, f"no span for {step.actor} attempt {attempt}"
            assert span.name == f"step {step.actor}"
            assert span.kind == SpanKind.CONSUMER
            assert span.trace_id == trace_id
            assert span.span_id == attempt_span_id(step.id, attempt)
            if step.cause_step_id is None:
                expected = root_span_id
            else:
                expected = attempt_span_id(step.cause_step_id, committed[step.cause_step_id])
            assert span.parent_id == expected == step.traceparent.split("-")[2]
    assert {s.trace_id for s in step_spans(seen, run_id)} == {trace_id}
    return by_attempt


# -- in-process workers, in-memory exporter ----------------------------------------------------


def test_a_run_is_one_trace_from_its_start_to_its_last_step(
    store: Store, start_worker: Callable[..., Worker], spans: Callable[[], list[Seen]]
) -> None:
    # Given a worker on the chain example
    worker = start_worker()
    # When a run starts outside any request (as the CLI starts one)
    run_id = worker.runtime.start_run(Start(n=3)).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    seen = wait_for_step_spans(spans, store, run_id)
    # Then a start_run PRODUCER span is the root of the run's trace
    trace_id, stored = stored_run(store, run_id)
    roots = [s for s in seen if s.name == "start_run chain.start"]
    assert len(roots) == 1 and roots[0].parent_id is None and roots[0].trace_id == trace_id
    assert roots[0].kind == SpanKind.PRODUCER
    # And every step is one CONSUMER span, a child of the span of the step that caused it
    by_attempt = assert_one_trace_parented_by_cause(seen, store, run_id, roots[0].span_id)
    assert len(by_attempt) == len(stored) == 4
    assert {s.attributes["baton.step.outcome"] for s in by_attempt.values()} == {"succeeded"}


def test_a_redelivered_succeeded_step_records_no_second_span(
    store: Store, start_worker: Callable[..., Worker], spans: Callable[[], list[Seen]]
) -> None:
    # Given a finished one-step run and its spans
    worker = start_worker()
    run_id = worker.runtime.start_run(Pinged(n=1)).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    before = step_spans(wait_for_step_spans(spans, store, run_id), run_id)
    assert len(before) == 2
    _, stored = stored_run(store, run_id)
    first = next(step for step in stored if step.cause_step_id is None)
    # When its message is delivered again (at-least-once delivery), and handled to the end
    worker.runtime.handle_message(first.actor, (first.id, run_id, first.traceparent), {})
    # And once more through Redis
    worker.runtime.send(
        Publish(uuid.uuid4().hex, first.id, run_id, first.actor, "default", first.traceparent)
    )
    time.sleep(1.0)
    # Then nothing ran and no span was added
    assert len(step_spans(spans(), run_id)) == 2
    assert_one_trace_parented_by_cause(spans(), store, run_id, _root(spans()))


def _root(seen: list[Seen]) -> str:
    return next(s.span_id for s in seen if s.name.startswith("start_run "))


def test_a_retry_links_to_the_attempt_before_it_and_parents_what_it_caused(
    store: Store, start_worker: Callable[..., Worker], spans: Callable[[], list[Seen]]
) -> None:
    # Given a step whose first two attempts fail
    worker = start_worker()
    run_id = worker.runtime.start_run(Flaky(failures=2)).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    seen = wait_for_step_spans(spans, store, run_id)
    # Then each attempt has its own span, the failed ones in error, each linked to the one before
    by_attempt = assert_one_trace_parented_by_cause(seen, store, run_id, _root(seen))
    _, stored = stored_run(store, run_id)
    step = next(s for s in stored if s.actor.endswith("flaky"))
    attempts = [by_attempt[(step.id, n)] for n in (1, 2, 3)]
    assert [a.attributes["baton.step.outcome"] for a in attempts] == [
        "retrying",
        "retrying",
        "succeeded",
    ]
    assert [a.error for a in attempts] == [True, True, False]
    assert attempts[0].attributes["error.type"] == "RuntimeError"
    assert attempts[0].links == []
    for earlier, later in itertools.pairwise(attempts):
        assert later.links == [(earlier.trace_id, earlier.span_id, {"baton.link.type": "retry"})]
    # And the step it caused is a child of the attempt that succeeded (checked above), not of
    # the first one
    follower = next(s for s in stored if s.cause_step_id == step.id)
    assert by_attempt[(follower.id, 1)].parent_id == attempts[2].span_id != attempts[0].span_id


def test_an_in_place_replay_links_to_the_failed_attempt(
    store: Store, start_worker: Callable[..., Worker], spans: Callable[[], list[Seen]]
) -> None:
    # Given a run that failed on a step with no retries
    worker = start_worker()
    run_id = worker.runtime.start_run(Fragile()).run_id
    assert wait_for_run(store, run_id) == "failed"
    # When an operator replays it in place
    worker.runtime.publish(replay_failed_steps(store, run_id, reason="fixed it"))
    assert wait_for_run(store, run_id) == "succeeded"
    seen = wait_for_step_spans(spans, store, run_id)
    # Then the replayed attempt's span links to the failed attempt's, as a replay
    by_attempt = assert_one_trace_parented_by_cause(seen, store, run_id, _root(seen))
    _, stored = stored_run(store, run_id)
    step = next(s for s in stored if s.actor.endswith("fragile"))
    failed, replayed = by_attempt[(step.id, 1)], by_attempt[(step.id, 2)]
    assert failed.attributes["baton.step.outcome"] == "failed" and failed.error
    assert replayed.links == [(failed.trace_id, failed.span_id, {"baton.link.type": "replay"})]


def test_agent_spans_follow_the_genai_conventions(
    store: Store,
    make_runtime: Callable[..., Runtime],
    offline_model: OfflineModelHandle,
    spans: Callable[[], list[Seen]],
) -> None:
    # Given a worker whose model is the offline model, and the triage example
    runtime = make_runtime(model_base_url=offline_model.base_url, model_api_key="offline")
    worker = Worker(runtime, threads=4)
    worker.start()
    try:
        # When an issue is triaged
        run_id = runtime.start_run(issue_opened()).run_id
        assert wait_for_run(store, run_id) == "succeeded"
        seen = wait_for_step_spans(spans, store, run_id)
    finally:
        worker.stop(timeout_ms=5_000)
    trace_id, _ = stored_run(store, run_id)
    in_trace = [s for s in seen if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in in_trace}
    assert_one_trace_parented_by_cause(seen, store, run_id, _root(seen))
    # Then every model call is a CLIENT `chat {model}` span with the GenAI attributes, inside
    # an `invoke_agent triage` span inside its model-call step
    chats = [s for s in in_trace if s.name.startswith("chat ")]
    assert len(chats) == 2
    for chat in chats:
        assert chat.name == "chat gpt-4.1-mini" and chat.kind == SpanKind.CLIENT
        attributes = chat.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "gpt-4.1-mini"
        assert attributes["gen_ai.request.temperature"] == 0
        assert attributes["gen_ai.response.model"]
        assert attributes["gen_ai.response.id"]
        assert attributes["gen_ai.response.finish_reasons"] in (("tool_calls",), ("stop",))
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["server.address"] == "127.0.0.1"
        assert "gen_ai.input.messages" not in attributes  # content is opt-in
        agent = by_id[str(chat.parent_id)]
        assert agent.name == "invoke_agent triage" and agent.kind == SpanKind.INTERNAL
        assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert agent.attributes["gen_ai.agent.name"] == "triage"
        assert by_id[str(agent.parent_id)].name == "step baton.agent.model_call"
    # And every tool function's call is an INTERNAL `execute_tool {name}` span in its step
    tools = [s for s in in_trace if s.name.startswith("execute_tool ")]
    assert {t.attributes["gen_ai.tool.name"] for t in tools} >= {"add_label", "post_comment"}
    for span in tools:
        assert span.kind == SpanKind.INTERNAL
        assert span.name == f"execute_tool {span.attributes['gen_ai.tool.name']}"
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["gen_ai.tool.call.id"]
        assert by_id[str(span.parent_id)].name == "step baton.agent.tool_call"
    # And token usage sits on chat spans only
    with_usage = {
        s.name.split(" ")[0] for s in in_trace if "gen_ai.usage.input_tokens" in s.attributes
    }
    assert with_usage == {"chat"}


def test_message_content_is_recorded_only_when_asked(
    store: Store,
    make_runtime: Callable[..., Runtime],
    offline_model: OfflineModelHandle,
    spans: Callable[[], list[Seen]],
) -> None:
    # Given content capture on (as OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true does)
    configure_tracing(capture_content=True)
    runtime = make_runtime(model_base_url=offline_model.base_url, model_api_key="offline")
    worker = Worker(runtime, threads=4)
    worker.start()
    try:
        run_id = runtime.start_run(issue_opened()).run_id
        assert wait_for_run(store, run_id) == "succeeded"
        seen = wait_for_step_spans(spans, store, run_id)
    finally:
        worker.stop(timeout_ms=5_000)
        configure_tracing(capture_content=False)
    # Then chat spans carry the messages in and out as the conventions' JSON
    chat = next(s for s in seen if s.name.startswith("chat "))
    sent = json.loads(chat.attributes["gen_ai.input.messages"])
    assert [m["role"] for m in sent[:2]] == ["system", "user"]
    assert sent[1]["parts"][0]["type"] == "text" and "Triage" in sent[1]["parts"][0]["content"]
    answered = json.loads(chat.attributes["gen_ai.output.messages"])
    assert answered[0]["role"] == "assistant" and answered[0]["finish_reason"]
    tool = next(s for s in seen if s.name == "execute_tool add_label")
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"])["label"]
    assert "gen_ai.tool.call.result" in tool.attributes


# -- the gateway: the request span is the root ---------------------------------------------

STANDARD_SECRET = "whsec_dHJhY2luZy10ZXN0cy1zZWNyZXQtMDEyMzQ1Njc4OQ=="


def test_the_webhook_request_span_is_the_root_of_the_run(
    store: Store,
    redis_url: str,
    start_worker: Callable[..., Worker],
    spans: Callable[[], list[Seen]],
) -> None:
    # Given a gateway and a worker
    start_worker()
    runtime = Runtime(store, redis_url)
    app = create_app(
        runtime,
        GatewayConfig(api_token=SecretStr("token"), standard_secrets=[SecretStr(STANDARD_SECRET)]),
    )
    server = ServerThread(app)
    server.start()
    try:
        # When a signed Standard Webhooks delivery arrives, carrying a traceparent of its own
        body = json.dumps(
            {
                "type": "t_tracing.pinged",
                "timestamp": datetime.now(UTC).isoformat(),
                "data": {"n": 1},
            }
        ).encode()
        message_id = f"msg_{uuid.uuid4().hex}"
        moment = datetime.now(tz=UTC)
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": Webhook(STANDARD_SECRET).sign(message_id, moment, body.decode()),
            "Content-Type": "application/json",
            "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01",
        }
        answer = httpx.post(f"{server.url}/webhooks/standard", content=body, headers=headers)
        assert answer.status_code == 202, answer.text
        webhook_run = answer.json()["run_id"]
        # And a run is started through the API by a caller inside a trace of its own
        caller_trace = uuid.uuid4().hex
        answer = httpx.post(
            f"{server.url}/runs",
            json={"type": "t_tracing.pinged", "data": {"n": 2}},
            headers={
                "Authorization": "Bearer token",
                "traceparent": f"00-{caller_trace}-{'ef' * 8}-01",
            },
        )
        assert answer.status_code == 202, answer.text
        api_run = answer.json()["run_id"]
        assert wait_for_run(store, webhook_run) == wait_for_run(store, api_run) == "succeeded"
        seen = wait_for_step_spans(spans, store, webhook_run)
        seen = wait_for_step_spans(spans, store, api_run)
    finally:
        server.stop()
    # Then the webhook's SERVER span is a root (a sender does not choose the trace) and the
    # run's trace; the trigger's steps are its children
    trace_id, _ = stored_run(store, webhook_run)
    requests = [s for s in seen if s.name == "POST /webhooks/{source}"]
    assert len(requests) == 1
    request = requests[0]
    assert request.kind == SpanKind.SERVER and request.parent_id is None
    assert request.trace_id == trace_id != "ab" * 16
    assert request.attributes["http.route"] == "/webhooks/{source}"
    assert request.attributes["http.response.status_code"] == 202
    assert_one_trace_parented_by_cause(seen, store, webhook_run, request.span_id)
    # And the API's request span continues the caller's trace, and roots that run
    api_trace, _ = stored_run(store, api_run)
    started = next(s for s in seen if s.name == "POST /runs")
    assert api_trace == started.trace_id == caller_trace
    assert started.parent_id == "ef" * 8
    assert_one_trace_parented_by_cause(seen, store, api_run, started.span_id)


# -- OTLP over HTTP to a real receiver -------------------------------------------------------


def test_spans_reach_an_otlp_http_receiver(
    store: Store,
    start_worker: Callable[..., Worker],
    receiver: Receiver,
    spans: Callable[[], list[Seen]],
) -> None:
    # Given the worker's provider also exporting OTLP/HTTP to a receiver on loopback
    provider = cast(TracerProvider, configure_tracing())
    processor = BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"), schedule_delay_millis=50
    )
    provider.add_span_processor(processor)
    try:
        worker = start_worker()
        # When a run goes through
        run_id = worker.runtime.start_run(Start(n=2)).run_id
        assert wait_for_run(store, run_id) == "succeeded"
        wait_for_step_spans(spans, store, run_id)
        processor.force_flush()
    finally:
        processor.shutdown()
    # Then the receiver decoded the same trace the in-memory exporter saw
    exported = receiver.spans()
    by_attempt = assert_one_trace_parented_by_cause(exported, store, run_id, _root(exported))
    assert len(by_attempt) == 3
    assert {s.span_id for s in step_spans(exported, run_id)} == {
        s.span_id for s in step_spans(spans(), run_id)
    }


# -- `baton worker` processes, SIGKILLed mid-step -----------------------------------------------


def _otlp_env(baton_env: dict[str, str], receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        **baton_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "traced-worker",
        # Export finished spans at once, so the worker SIGKILLed later has sent what it could.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the worker drains and flushes its spans before exiting."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


@pytest.mark.slow
def test_a_sigkilled_step_is_redelivered_and_exports_one_span_per_attempt_that_ran(
    store: Store,
    make_runtime: Callable[..., Runtime],
    worker_processes: Callable[..., subprocess.Popen[bytes]],
    baton_env: dict[str, str],
    receiver: Receiver,
    tmp_path: Path,
    spans: Callable[[], list[Seen]],
) -> None:
    ledger = str(tmp_path / "effects.db")
    effects.create(ledger)
    env = _otlp_env(baton_env, receiver)
    # Given a `baton worker` exporting OTLP to the receiver, and a four-step chain
    first = worker_processes("tests.actors.chaos", env=env)
    runtime = make_runtime()
    run_id = runtime.start_run(ChaosStep(effects=ledger, steps=4, pause=1.5)).run_id
    # When the worker is SIGKILLed while step 2 runs
    wait_until(lambda: effects.calls_per_label(ledger)[f"{run_id}/2"], 30, "step 2 to start")
    wait_until(lambda: step_spans(receiver.spans(), run_id), 10, "step 1's span to be exported")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    # And a new worker takes over: the lease expires and the step is redelivered
    second = worker_processes("tests.actors.chaos", env=env)
    assert wait_for_run(store, run_id, timeout=60) == "succeeded"
    _stop(second)
    # Then every attempt that ran to its end exported exactly one span, the killed one none
    exported = [s for s in receiver.spans() if s.service == "traced-worker"]
    _, stored = stored_run(store, run_id)
    killed = next(s for s in stored if any(outcome == "lost" for _, outcome in s.attempts))
    assert killed.attempts == [(1, "lost"), (2, "succeeded")]
    by_attempt = assert_one_trace_parented_by_cause(
        exported + spans(), store, run_id, _root(spans())
    )
    assert (
        len(step_spans(exported, run_id))
        == len(by_attempt)
        == sum(1 for step in stored for _, outcome in step.attempts if outcome != "lost")
    )
    # And the redelivered attempt links to the lost one, and parents the next step
    redelivered = by_attempt[(killed.id, 2)]
    assert redelivered.links == [
        (redelivered.trace_id, attempt_span_id(killed.id, 1), {"baton.link.type": "retry"})
    ]
    after = next(s for s in stored if s.cause_step_id == killed.id)
    assert by_attempt[(after.id, 1)].parent_id == redelivered.span_id


@pytest.mark.slow
def test_a_worker_process_records_message_content_when_the_variable_says_so(
    store: Store,
    make_runtime: Callable[..., Runtime],
    worker_processes: Callable[..., subprocess.Popen[bytes]],
    baton_env: dict[str, str],
    receiver: Receiver,
    offline_model: OfflineModelHandle,
) -> None:
    # Given `baton worker examples.triage` with content capture on, exporting by OTLP
    env = _otlp_env(
        baton_env,
        receiver,
        OPENAI_BASE_URL=offline_model.base_url,
        OPENAI_API_KEY="offline",
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
    )
    worker = worker_processes("examples.triage", env=env)
    # When an issue is triaged
    run_id = make_runtime().start_run(issue_opened()).run_id
    assert wait_for_run(store, run_id, timeout=60) == "succeeded"
    _stop(worker)
    # Then its chat spans arrived with the GenAI attributes and the messages
    chats = [s for s in receiver.spans() if s.name == "chat gpt-4.1-mini"]
    assert len(chats) == 2
    for chat in chats:
        assert chat.kind == SpanKind.CLIENT
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert json.loads(chat.attributes["gen_ai.input.messages"])[0]["role"] == "system"
        assert json.loads(chat.attributes["gen_ai.output.messages"])[0]["role"] == "assistant"
