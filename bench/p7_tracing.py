"""P7: what OTLP export costs the hot path: P1's no-op throughput, export on vs off.

Both sides are P1's Baton side (one-step no-op runs published first, then drained by an
in-process ``Worker`` with 8 threads) with the OpenTelemetry SDK on, as it always is. "On"
adds a ``BatchSpanProcessor`` with the OTLP/HTTP (protobuf) exporter, the one the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` variable turns on, sending to a real HTTP receiver on
127.0.0.1 in this process; the receiver keeps the bodies and decodes them after the clock
stops, to count the spans that arrived. Passes run off, on, on, off (ABBA) on fresh stores,
so drift between passes cancels out.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from bench._common import Result, Row, Sandbox, median, say, scalar, wait_until
from bench.actors import Noop
from store import ClaimedStep, NewEvent, Store, StoredEvent, create_run, derive_id
from workers import Runtime, RuntimeConfig, Worker
from workers._tracing import configure_tracing, observe_step

TITLE = "OTLP export on vs off: no-op step throughput"
GOAL = 0.9
THREADS = 8
_FINISHED = "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed', 'canceled')"
# (runs per pass, passes): the same run count as P1's Baton side.
FULL = (3_000, ("off", "on", "on", "off"))
QUICK = (300, ("off", "on"))


class Receiver:
    """An OTLP/HTTP traces endpoint that answers 200 and keeps what it was sent."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self) -> int:
        count = 0
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            count += sum(
                len(scope.spans) for spans in request.resource_spans for scope in spans.scope_spans
            )
        return count

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(quick: bool) -> Result:
    count, order = QUICK if quick else FULL
    config = RuntimeConfig()
    provider = configure_tracing("baton-bench")
    if not isinstance(provider, TracerProvider):
        raise RuntimeError("the OpenTelemetry SDK is not installed as the tracer provider")
    result = Result("P7", TITLE)
    result.settings = {
        "mode": "in-process, enqueue then drain (P1's Baton side)",
        "threads": THREADS,
        "runs per pass (1 step each)": count,
        "passes": "/".join(order),
        "exporter": "OTLP http/protobuf, BatchSpanProcessor defaults",
        "receiver": "http.server thread on 127.0.0.1, same process",
    }
    rates: dict[str, list[float]] = {"off": [], "on": []}
    exported = sent_bytes = requests = 0
    with Sandbox("p7-warm-up") as sandbox:
        # Untimed: the first drain in a process pays for imports and first connections.
        _drain(sandbox, sandbox.store(), min(count, 200), config)
    receiver = Receiver()
    try:
        cost_off = _span_cost(None)
        for side in order:
            processor = None
            if side == "on":
                processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint))
                provider.add_span_processor(processor)
            try:
                with Sandbox("p7") as sandbox:
                    rate = _drain(sandbox, sandbox.store(), count, config)
            finally:
                if processor is not None:
                    processor.force_flush()
                    # Inert from now on: a provider's processors cannot be removed.
                    processor.shutdown()  # type: ignore[no-untyped-call]
            rates[side].append(rate)
            say(f"P7: export {side}: {count:,} runs at {rate:,.0f}/s")
        exported = receiver.spans()
        sent_bytes = sum(len(body) for body in receiver.bodies)
        requests = len(receiver.bodies)
        # A queue that holds every probe span: a full queue would drop them, costing nothing.
        probe = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=receiver.endpoint), max_queue_size=2 * _PROBES
        )
        provider.add_span_processor(probe)
        try:
            cost_on = _span_cost(probe)
        finally:
            probe.shutdown()  # type: ignore[no-untyped-call]
    finally:
        receiver.stop()
    off, on = median(rates["off"]), median(rates["on"])
    result.rows.append(
        Row(
            "no-op steps per second, OTLP export on",
            on,
            "/s",
            baseline=off,
            baseline_label="export off",
            goal=f">= {GOAL} of off",
            passed=on >= GOAL * off,
        )
    )
    result.rows.append(
        Row(
            "time per step span in a loop (span, metrics, export)",
            cost_on,
            "µs",
            baseline=cost_off,
            baseline_label="export off",
        )
    )
    expected = count * len(rates["on"])
    result.rows.append(Row("step spans received", exported, "", baseline=expected))
    if exported:
        result.rows.append(Row("OTLP bytes per span", sent_bytes / exported, "B"))
    result.notes.append(
        f"passes off: {', '.join(f'{r:,.0f}/s' for r in rates['off'])}; "
        f"on: {', '.join(f'{r:,.0f}/s' for r in rates['on'])}; the receiver got {requests} "
        f"export request(s), {sent_bytes:,} bytes"
    )
    if exported < expected:
        result.notes.append(
            f"{expected - exported} span(s) were dropped (the batch processor's queue was full)"
        )
    return result


_PROBES = 5_000


def _span_cost(processor: BatchSpanProcessor | None) -> float:
    """Microseconds of one step's observation (span, context, metrics), alone in a loop."""
    step = ClaimedStep(
        id=derive_id("p7", "step"),
        run_id=derive_id("p7", "run"),
        actor="bench.actors.noop",
        attempt=1,
        attempts_left=0,
        attempt_base=0,
        traceparent=f"00-{derive_id('p7', 'trace')}-{derive_id('p7', 'cause')[:16]}-01",
        trace_id=derive_id("p7", "trace"),
        event=StoredEvent(
            id=derive_id("p7", "event"), run_id="", type=Noop.type, data={}, groups=[]
        ),
        available_at=time.time(),
    )
    started = time.perf_counter()
    for _ in range(_PROBES):
        with observe_step(step, "default"):
            pass
    elapsed = time.perf_counter() - started
    if processor is not None:
        processor.force_flush()
    return elapsed / _PROBES * 1e6


def _drain(sandbox: Sandbox, store: Store, count: int, config: RuntimeConfig) -> float:
    """P1's measure: publish ``count`` one-step runs, then time a worker draining them."""
    runtime = Runtime(store, sandbox.redis_url, config)
    trigger = NewEvent(Noop.type, Noop().model_dump(mode="json"))
    batch: list[Any] = []
    for index in range(count):
        batch.extend(create_run(store, trigger, runtime.route).publish)
        if len(batch) >= 500 or index == count - 1:
            runtime.publish(batch, confirm_now=True)
            batch = []
    worker = Worker(runtime, threads=THREADS)
    started = time.time()
    worker.start()
    try:
        wait_until(
            lambda: scalar(store, _FINISHED) >= count,
            timeout=600,
            every=0.1,
            what=f"{count} Baton runs finishing",
        )
    finally:
        worker.stop(timeout_ms=10_000)
        runtime.broker.close()
    failed = scalar(store, "SELECT count(*) FROM runs WHERE status != 'succeeded'")
    if failed:
        raise RuntimeError(f"{failed} of {count} no-op runs did not succeed")
    finished = scalar(store, "SELECT max(finished_at) FROM runs")
    return float(count / (finished - started))
