"""Starting runs from the gateway: created by its run writer, a process of its own."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import anyio
from opentelemetry.trace import Span

from events import Event
from gateway._batch import Answer, RunRequest
from gateway._errors import ApiError
from gateway._events import trigger_event
from gateway._records import record_ignored
from gateway._writer_client import RunWriter
from gateway.sources import Delivery
from store import CreatedRun, NewEvent, Publish, modules_for_event_type
from workers import Runtime, WorkerError, import_modules
from workers._tracing import run_trace

_logger = logging.getLogger("baton.gateway")
# Deliveries handed to the run writer together at most, within one turn of the event loop.
HAND_OVER_EVERY = 16
# (trace id, parent span id) of a run: None for a new trace, or for its first span.
Root = tuple[str | None, str | None]


@dataclass(frozen=True)
class Outcome:
    status: Literal["accepted", "duplicate", "ignored"]
    run_id: str | None


class Intake:
    """The gateway's writes to the store and the messages that follow them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self._import_lock = threading.Lock()
        # Deliveries read in this turn of each event loop, not yet handed to the writer.
        self._pending: dict[asyncio.AbstractEventLoop, list[RunRequest]] = {}
        self.writer = RunWriter(runtime)

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        # Runs handed over are created and their messages sent before this returns.
        await self.writer.stop()

    def publish(self, messages: list[Publish]) -> None:
        """Send messages a transaction here has committed (from a thread: it waits on Redis).
        If Redis is away their outbox rows stay, and the workers' relay sends them."""
        self.runtime.publish(messages, confirm_now=True)

    # -- webhooks ------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery, span: Span) -> Outcome:
        """Start the delivery's run, or answer with the run it already started, or record it
        as ignored when no actor subscribes to its type. ``span`` (the request's) is the root
        of the run's trace."""
        dedupe_key = f"webhook:{delivery.source}:{delivery.delivery_id}"
        root = _ids_of(span)
        if not self.runtime.route(delivery.event_type):
            # Rare: may import modules or write an ignored record; off the event loop.
            return await anyio.to_thread.run_sync(
                self._deliver_unrouted, delivery, dedupe_key, root
            )
        event = trigger_event(delivery.event_type, delivery.data)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[CreatedRun] = loop.create_future()
        request = self._request(event, dedupe_key, answer, root)
        # The deliveries read in one turn of the event loop go to the writer together, a few
        # at a time: the writer commits the first ones while the loop reads the rest.
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append(request)
        if len(pending) >= HAND_OVER_EVERY:
            self._hand_over(loop)
        # Once queued the run is created even if the sender hangs up (cancelling the wait);
        # the sender's retry then finds it.
        created = await answer
        return Outcome("accepted" if created.created else "duplicate", created.run_id)

    def _deliver_unrouted(self, delivery: Delivery, dedupe_key: str, root: Root) -> Outcome:
        if self.subscribed(delivery.event_type):
            event = trigger_event(delivery.event_type, delivery.data)
            answer: Future[CreatedRun] = Future()
            self.writer.submit_threadsafe([self._request(event, dedupe_key, answer, root)])
            created = answer.result()
            return Outcome("accepted" if created.created else "duplicate", created.run_id)
        started = record_ignored(
            self.store,
            source=delivery.source,
            delivery_id=delivery.delivery_id,
            event_type=delivery.event_type,
            dedupe_key=dedupe_key,
        )
        return Outcome("ignored", None) if started is None else Outcome("duplicate", started)

    # -- runs ----------------------------------------------------------------------------

    def request_run(
        self, event: Event, *, dedupe_key: str | None = None, trace_id: str | None = None
    ) -> Future[CreatedRun]:
        """Queue the run's first transaction; the future resolves once it has committed."""
        answer: Future[CreatedRun] = Future()
        # The request's span is the run's root: the trigger's steps are its children.
        with run_trace(event.type, trace_id) as root:
            self.writer.submit_threadsafe([self._request(event, dedupe_key, answer, root)])
        return answer

    def _request(
        self,
        event: Event,
        dedupe_key: str | None,
        answer: Answer,
        root: Root,
    ) -> RunRequest:
        trigger = NewEvent(event.type, event.model_dump(mode="json"))
        return RunRequest(trigger, dedupe_key, root[0], root[1], answer=answer)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending.pop(loop, None)
        if pending:
            self.writer.submit(pending)

    def start_run(
        self, event: Event, *, dedupe_key: str | None = None, trace_id: str | None = None
    ) -> CreatedRun:
        """``request_run`` and wait for the commit (from a thread, never the event loop)."""
        return self.request_run(event, dedupe_key=dedupe_key, trace_id=trace_id).result()

    def subscribed(self, event_type: str) -> bool:
        """Whether an actor subscribes to ``event_type``, importing the modules workers
        declared for it in the store's catalog when this process has not imported them."""
        if self.runtime.route(event_type):
            return True
        missing = [
            module
            for module in modules_for_event_type(self.store, event_type)
            if module not in sys.modules
        ]
        if not missing:
            return False
        with self._import_lock:
            try:
                import_modules(missing)
            except WorkerError as error:
                raise ApiError(
                    503,
                    "module_unavailable",
                    f"workers run {', '.join(missing)} for {event_type!r} but the gateway "
                    f"cannot import it: {error}; name it in BATON_MODULES where the gateway runs",
                ) from None
        _logger.info("imported %s for event type %r", ", ".join(missing), event_type)
        return bool(self.runtime.route(event_type))


def _ids_of(span: Span) -> Root:
    """(trace id, span id) of ``span``: the trace and parent of a run it starts."""
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
