"""The step protocol on Dramatiq: claim, run the handler, commit, publish.

One Runtime per process binds every registered actor to the broker as a Dramatiq actor whose
message is a pointer (step id, run id, trace context). The store decides what runs; Redis
only says when to look.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage, Middleware, TimeLimitExceeded

from events import Event, EventError, parse_event
from store import (
    ClaimedStep,
    Committed,
    Eager,
    LeaseLost,
    NewEvent,
    Preparer,
    Publish,
    Route,
    Store,
    StoreError,
    WriterBusy,
    claim_step,
    commit_and_claim,
    confirm_published,
    create_run,
    fail_step,
    park_step,
    record_actors,
    record_dead_letter,
    renew_leases,
)
from store import CreatedRun as _CreatedRun
from workers import _metrics
from workers._actor import Actor, find_actor, registered_actors, subscribers
from workers._broker import Broker, DeadLetterUnknownActors, step_message
from workers._context import Context
from workers._errors import RetryLater, Wait
from workers._tracing import note_step_outcome, observe_step, run_trace

_logger = logging.getLogger("baton.worker")


@dataclass(frozen=True)
class RuntimeConfig:
    """The tunings a worker needs, passed down from the settings."""

    lease_seconds: float = 10.0
    default_retries: int = 3
    min_backoff_ms: int = 500
    max_backoff_ms: int = 60_000
    step_timeout_seconds: float = 300.0
    relay_after_seconds: float = 3.0
    republish_after_seconds: float = 30.0
    reconcile_interval_seconds: float = 1.0
    worker_idle_timeout_ms: int = 100
    # Async steps (model calls) in flight per process: they wait on the network, not a thread.
    max_async_steps: int = 1000
    # The model endpoint (OpenAI-compatible) and what its tokens cost.
    model_base_url: str | None = None
    model_api_key: str | None = None
    model_timeout_seconds: float = 120.0
    model_max_retries: int = 3
    model_prices: Mapping[str, Any] = field(default_factory=dict)


class Runtime:
    """The store, the broker and the registered actors of one process."""

    def __init__(self, store: Store, redis_url: str, config: RuntimeConfig | None = None) -> None:
        self.store = store
        self.redis_url = redis_url
        self.config = config or RuntimeConfig()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.broker = Broker(
            url=redis_url,
            on_malformed=self._dead_letter,
            heartbeat_timeout_ms=int(self.config.republish_after_seconds * 1000),
        )
        self.broker.add_middleware(DeadLetterUnknownActors(self._dead_letter))
        # Added after AsyncIO, so on shutdown it runs first: async steps commit while the
        # event loop still turns, after the consumers have stopped taking messages.
        self.broker.add_middleware(_EventLoopLifecycle(self))
        _metrics.watch_store(store)
        self._bound: dict[str, dramatiq.Actor[Any, Any]] = {}
        # Step id -> when to stop renewing its lease: the step's time limit plus a grace. A
        # handler stuck where no time limit can interrupt it (blocking C code) then loses its
        # lease, and the step runs elsewhere instead of hanging the run for good.
        self._in_flight: dict[str, float] = {}
        self._in_flight_lock = threading.Lock()
        # Async steps started on the event loop and not ended (committed ones included).
        self._async_running = 0
        # Steps whose commit, failure or park is being written: their lease ends on purpose.
        self._ending_leases: set[str] = set()
        self._confirmations: list[str] = []
        self._confirm_lock = threading.Lock()
        self._housekeeper: _Housekeeper | None = None
        self._async_slots = threading.BoundedSemaphore(self.config.max_async_steps)
        # Whether a commit takes the async steps it makes ready for this worker (no message,
        # no claim of their own); off once the worker begins to stop, so its drain ends.
        self.runs_next_steps = True
        self.bind()

    # -- wiring ---------------------------------------------------------------------------

    def bind(self) -> None:
        """Make a Dramatiq actor for every registered actor not bound yet."""
        for registered in registered_actors():
            name = registered.options.name
            if name in self._bound:
                continue
            time_limit = registered.options.timeout_seconds or self.config.step_timeout_seconds
            self._bound[name] = dramatiq.Actor(
                self._entry_point(name),
                broker=self.broker,
                actor_name=name,
                queue_name=registered.options.queue,
                priority=0,
                options={"time_limit": int(time_limit * 1000), "max_retries": 0},
            )

    def record_catalog(self) -> None:
        """Tell the store which actors this worker runs, so the CLI and gateway can find them."""
        record_actors(
            self.store,
            [
                {
                    "name": a.options.name,
                    "module": a.fn.__module__,
                    "queue": a.options.queue,
                    "event_types": [cls.type for cls in a.options.on],
                    "join": a.options.join,
                }
                for a in registered_actors()
                if a.fn.__module__ != "__main__"
            ],
        )

    def _entry_point(self, name: str) -> Any:
        def run_step(*args: Any, **kwargs: Any) -> None:
            self.handle_message(name, args, kwargs)

        run_step.__name__ = name.rsplit(".", 1)[-1]
        return run_step

    def route(self, event_type: str) -> Sequence[Route]:
        return [
            Route(
                actor=a.options.name,
                queue=a.options.queue,
                max_retries=self.config.default_retries
                if a.options.retries is None
                else a.options.retries,
                join=a.options.join,
            )
            for a in subscribers(event_type)
        ]

    # -- starting runs -------------------------------------------------------------------

    def start_run(
        self, event: Event, *, dedupe_key: str | None = None, trace_id: str | None = None
    ) -> _CreatedRun:
        """Create a run triggered by ``event`` and hand its first steps to the broker."""
        with run_trace(event.type, trace_id) as (trace_id, root_span_id):
            created = create_run(
                self.store,
                NewEvent(event.type, event.model_dump(mode="json")),
                self.route,
                dedupe_key=dedupe_key,
                trace_id=trace_id,
                root_span_id=root_span_id,
            )
        self.publish(created.publish, confirm_now=True)
        return created

    # -- publishing ----------------------------------------------------------------------

    def publish(self, messages: Sequence[Publish], *, confirm_now: bool = False) -> bool:
        """Hand committed messages to Redis (one round trip), then mark their outbox rows done.
        Returns whether Redis took them.

        If this fails (Redis down) the outbox rows stay and the relay sends them later.
        """
        if not messages:
            return True
        try:
            self.broker.enqueue_many([step_message(message) for message in messages])
        except Exception:
            _logger.warning(
                "could not publish %d message(s); the relay will retry",
                len(messages),
                exc_info=True,
            )
            return False
        sent = [message.message_id for message in messages]
        if confirm_now or self._housekeeper is None:
            try:
                confirm_published(self.store, sent)
            except Exception:
                # Sent all the same: the relay sends them once more, and a step's claim
                # takes a message it has already had as done.
                _logger.warning(
                    "sent %d message(s) but could not mark them sent", len(sent), exc_info=True
                )
        else:
            with self._confirm_lock:
                self._confirmations.extend(sent)
        return True

    def send(self, message: Publish) -> None:
        """Hand one message to Redis (its outbox row, if any, is left to the caller)."""
        self.broker.enqueue_many([step_message(message)])

    # -- running a step ------------------------------------------------------------------

    def handle_message(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if kwargs or len(args) != 3 or not all(isinstance(a, str) for a in args):
            self._dead_letter_current(f"message for {name} has malformed arguments {args!r}")
            return
        step_id, _run_id, _traceparent = args
        registered = find_actor(name)
        if registered is None:
            self._dead_letter_current(f"no actor {name!r} is registered in this worker")
            return
        claim_it = functools.partial(
            claim_step,
            self.store,
            step_id,
            self.owner,
            self.config.lease_seconds,
            prepare=registered.options.prepare,
        )
        if registered.options.is_async:
            # Take the async slot before the lease: a claim that waited for a slot could
            # otherwise outlive its unrenewed lease while another worker runs the step.
            self._async_slots.acquire()
            try:
                claim = claim_it()
            except BaseException:
                self._async_slots.release()
                raise
            if claim.outcome != "claimed":
                self._async_slots.release()
        else:
            claim = claim_it()
        if claim.outcome == "succeeded":
            self.publish(claim.republish, confirm_now=True)
            return
        if claim.outcome == "missing":
            self._dead_letter_current(claim.detail)
            return
        if claim.outcome == "early":
            message = CurrentMessage.get_current_message()
            if message is not None:
                self.broker.enqueue(message.copy(), delay=claim.available_in_ms)
            return
        if claim.outcome != "claimed":
            _logger.debug("step %s not run: %s %s", step_id, claim.outcome, claim.detail)
            return
        assert claim.step is not None
        self._run_claimed(registered, claim.step)

    def _run_claimed(self, registered: Actor[Any], step: ClaimedStep) -> None:
        if registered.options.is_async:
            self._hand_off(registered, step)
            return
        self._hold(registered, step)
        try:
            with observe_step(step, registered.options.queue):
                committed = self._execute(registered, step)
        except LeaseLost as error:
            _logger.warning("%s", error)
            committed = Committed([])
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(step.id, None)
        started = 0
        try:
            self.publish(committed.publish)
            for claimed in committed.claimed:
                started += 1  # From here the hand-off owns the step's slot.
                self._hand_off(_async_actor(claimed), claimed)
        finally:
            # Interrupted (a time limit, a shutdown): the steps not started give their slots
            # back; their leases run out and the reconciler sends them to a worker.
            for _ in committed.claimed[started:]:
                self._async_slots.release()

    def _hold(
        self, registered: Actor[Any], step: ClaimedStep, *, running_async: bool = False
    ) -> None:
        limit = registered.options.timeout_seconds or self.config.step_timeout_seconds
        with self._in_flight_lock:
            self._in_flight[step.id] = time.monotonic() + limit + 2 * self.config.lease_seconds
            self._async_running += running_async

    def _execute(self, registered: Actor[Any], step: ClaimedStep) -> Committed:
        context = self._context(step)
        try:
            return self._attempt(registered, step, context)
        finally:
            context._release()

    def _attempt(self, registered: Actor[Any], step: ClaimedStep, context: Context) -> Committed:
        try:
            result = registered.fn(_handler_argument(step), context)
            emitted, fan_out = _emitted(registered, result)
        except Wait as wait:
            self._park(step, context, wait)
            return Committed([])
        except LeaseLost:
            raise
        except (Exception, TimeLimitExceeded) as error:
            return Committed(self._fail(registered, step, error, context))
        try:
            return self._commit(step, context, emitted, fan_out)
        except LeaseLost:
            raise
        except Exception as error:
            # The store refused the commit (or a group it was in failed): a failed attempt,
            # keeping what it must and retried with backoff, not left to its lease to run
            # again unbounded. Had it landed after all, the step is not ours: LeaseLost.
            return Committed(self._fail(registered, step, error, context))

    def _context(self, step: ClaimedStep) -> Context:
        return Context(
            runtime=self,
            run_id=step.run_id,
            step_id=step.id,
            actor=step.actor,
            attempt=step.attempt,
            attempt_base=step.attempt_base,
            traceparent=step.traceparent,
            trace_id=step.trace_id,
            recorded_from=step.origin_step_id if step.recorded else None,
            prepared=step.prepared,
        )

    def _commit(
        self,
        step: ClaimedStep,
        context: Context,
        emitted: list[NewEvent],
        fan_out: bool,
        *,
        wait: bool = True,
    ) -> Committed:
        """Commit the step; the async steps it makes ready are taken for this worker.
        ``wait=False``: see ``Store.transaction``."""
        # Slots taken for steps the transaction then does not keep are given back.
        taken: list[str] = []

        def takes(actor: str) -> bool:
            if not self._takes(actor):
                return False
            taken.append(actor)
            return True

        eager = Eager(self.owner, self.config.lease_seconds, takes, _preparer)
        try:
            with self._ending(step):
                committed = commit_and_claim(
                    self.store,
                    step,
                    self.owner,
                    emitted=emitted,
                    fan_out=fan_out,
                    memory_writes=context.memory.pending_writes(),
                    extra_writes=context.pending_writes(),
                    router=self.route,
                    eager=eager if self.runs_next_steps else None,
                    wait=wait,
                )
        except BaseException:
            for _ in taken:
                self._async_slots.release()
            raise
        return committed

    @contextlib.contextmanager
    def _ending(self, step: ClaimedStep) -> Iterator[None]:
        """Around the transaction that ends the step's lease (its commit, failure or park):
        meanwhile the housekeeper does not take the lease's end for a loss, and afterwards
        it stops renewing it."""
        with self._in_flight_lock:
            self._ending_leases.add(step.id)
        ended = True
        try:
            yield
        except WriterBusy:
            # Refused before anything was written: the step runs on, its lease renewed,
            # until the commit made in a thread instead.
            ended = False
            raise
        finally:
            with self._in_flight_lock:
                self._ending_leases.discard(step.id)
                if ended:
                    self._in_flight.pop(step.id, None)

    def _takes(self, actor: str) -> bool:
        """Whether this worker runs a ready step of ``actor`` itself, now: an async actor it
        has, with a free slot on its event loop (taken here)."""
        registered = find_actor(actor)
        if registered is None or not registered.options.is_async:
            return False
        if get_event_loop_thread() is None:
            return False
        return self._async_slots.acquire(blocking=False)

    # -- async steps: handed to the event loop, the Dramatiq thread moves on ---------------

    def _hand_off(self, registered: Actor[Any], step: ClaimedStep) -> None:
        """Run an async step on the worker's event loop without holding a worker thread.

        The message is acked when this returns; the step stays ours through its lease, which
        the housekeeper renews until the commit. If the process dies, the lease runs out and
        the reconciler re-publishes the step. A bounded number run at once: past it, the
        Dramatiq thread waits for a slot before claiming, which stops this worker from
        fetching more. The caller holds the slot; it is released when the step ends.
        """
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            self._async_slots.release()
            raise RuntimeError("async actors need the AsyncIO middleware's event loop")
        self._hold(registered, step, running_async=True)
        future = asyncio.run_coroutine_threadsafe(
            self._execute_async(registered, step), loop_thread.loop
        )
        future.add_done_callback(functools.partial(self._async_step_ended, step))

    def _run_next_steps(self, claimed: list[ClaimedStep]) -> None:
        """Start the steps a commit took for this worker, on this event loop (its own)."""
        loop = asyncio.get_running_loop()
        for step in claimed:
            registered = _async_actor(step)
            self._hold(registered, step, running_async=True)
            task = loop.create_task(self._execute_async(registered, step))
            task.add_done_callback(functools.partial(self._async_step_ended, step))

    def _async_step_ended(
        self, step: ClaimedStep, done: concurrent.futures.Future[None] | asyncio.Future[None]
    ) -> None:
        with self._in_flight_lock:
            self._in_flight.pop(step.id, None)
            self._async_running -= 1
        self._async_slots.release()
        if not done.cancelled() and done.exception() is not None:
            _logger.error(
                "async step %s crashed outside its handler", step.id, exc_info=done.exception()
            )

    async def _execute_async(self, registered: Actor[Any], step: ClaimedStep) -> None:
        # The step's span covers the coroutine, on the event loop, until its commit.
        with observe_step(step, registered.options.queue):
            await self._run_async(registered, step)

    async def _run_async(self, registered: Actor[Any], step: ClaimedStep) -> None:
        context = self._context(step)
        limit = registered.options.timeout_seconds or self.config.step_timeout_seconds
        deadline = asyncio.timeout(limit)
        try:
            try:
                async with deadline:
                    result = await registered.fn(_handler_argument(step), context)
                emitted, fan_out = _emitted(registered, result)
            except Wait as wait:
                await asyncio.to_thread(self._park, step, context, wait)
            except LeaseLost:
                # Found out by the handler itself (a tool's intent refused): nothing to record.
                raise
            except TimeoutError as error:
                # The step's own time limit, or a timeout of the handler's (a socket, a
                # client): an ordinary failure.
                failure = TimeLimitExceeded(f"{limit:g}s") if deadline.expired() else error
                await asyncio.to_thread(self._fail_and_publish, registered, step, failure, context)
            except Exception as error:
                await asyncio.to_thread(self._fail_and_publish, registered, step, error, context)
            else:
                try:
                    claimed = await self._commit_async(step, context, emitted, fan_out)
                except LeaseLost:
                    raise
                except Exception as error:
                    # As for a sync step (_execute): a failed attempt.
                    await asyncio.to_thread(
                        self._fail_and_publish, registered, step, error, context
                    )
                else:
                    self._run_next_steps(claimed)
        except LeaseLost as error:
            _logger.warning("%s", error)
            note_step_outcome("lease_lost", error)
        # Not in a `finally`: a cancelled coroutine's thread may still be recording its
        # failure, with the writes kept for it.
        context._release()

    async def _commit_async(
        self, step: ClaimedStep, context: Context, emitted: list[NewEvent], fan_out: bool
    ) -> list[ClaimedStep]:
        """Commit an async step: on the event loop itself when the store's writer is free at
        once, else in a thread. Returns the steps the commit took for this worker.

        A commit on the loop saves the two thread switches of a hop, which are a good part
        of what an async step costs when hundreds finish each second (P5). It is tried only
        where it cannot block the loop: SQLite's writer, taken without waiting, neither for
        this process's threads nor for another process (``wait=False``).
        """
        if self.store.writes_without_waiting:
            try:
                committed = self._commit(step, context, emitted, fan_out, wait=False)
            except WriterBusy:
                pass
            else:
                _metrics.async_step_committed("event_loop")
                if committed.publish:
                    # Sending to Redis may stall: off the loop.
                    await asyncio.to_thread(self.publish, committed.publish)
                return committed.claimed
        _metrics.async_step_committed("thread")
        return await asyncio.to_thread(self._commit_and_publish, step, context, emitted, fan_out)

    def _park(self, step: ClaimedStep, context: Context, wait: Wait) -> None:
        with self._ending(step):
            park_step(
                self.store,
                step,
                self.owner,
                wait_names=wait.names,
                deadline=wait.deadline,
                extra_writes=context.failure_writes(),
            )
        note_step_outcome("parked")

    def _fail_and_publish(
        self, registered: Actor[Any], step: ClaimedStep, error: BaseException, context: Context
    ) -> None:
        self.publish(self._fail(registered, step, error, context))

    def _commit_and_publish(
        self, step: ClaimedStep, context: Context, emitted: list[NewEvent], fan_out: bool
    ) -> list[ClaimedStep]:
        """Commit, then send what the commit caused: one hop off the event loop, not two.
        Returns the steps the commit took for this worker."""
        committed = self._commit(step, context, emitted, fan_out)
        self.publish(committed.publish)
        return committed.claimed

    def drain(self, timeout: float) -> None:
        """Wait for handed-off async steps to finish, up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._in_flight_lock:
                if not self._in_flight and not self._async_running:
                    return
            time.sleep(0.05)

    def _fail(
        self, registered: Actor[Any], step: ClaimedStep, error: BaseException, context: Context
    ) -> list[Publish]:
        permanent = isinstance(error, registered.options.throws + _NEVER_RETRIED)
        retry_in_ms = None
        if not permanent and step.attempts_left > 0:
            _, retry_in_ms = compute_backoff(
                step.attempt - 1,
                factor=self.config.min_backoff_ms,
                max_backoff=self.config.max_backoff_ms,
            )
            if isinstance(error, RetryLater):
                retry_in_ms = max(retry_in_ms, round(error.retry_after_seconds * 1000))
        message = str(error) or repr(error)
        if isinstance(error, TimeLimitExceeded):
            limit = registered.options.timeout_seconds or self.config.step_timeout_seconds
            message = (
                f"the step ran longer than its {limit:g}s time limit; raise it with "
                f"@actor(timeout=...) if the work is legitimately slow"
            )
        _logger.warning(
            "step %s (%s) attempt %d failed: %s: %s%s",
            step.id,
            step.actor,
            step.attempt,
            type(error).__name__,
            message,
            f"; retrying in {retry_in_ms} ms" if retry_in_ms is not None else "",
        )
        note_step_outcome("failed" if retry_in_ms is None else "retrying", error)
        with self._ending(step):
            return fail_step(
                self.store,
                step,
                self.owner,
                error_type=type(error).__name__,
                error_message=message,
                traceback="".join(traceback.format_exception(error)),
                retry_in_ms=retry_in_ms,
                extra_writes=context.failure_writes(),
            )

    # -- dead letters --------------------------------------------------------------------

    def _dead_letter(self, queue: str, raw: bytes, reason: str) -> None:
        _metrics.dead_lettered(queue)
        try:
            record_dead_letter(self.store, queue=queue, raw=raw, reason=reason)
        except StoreError:
            _logger.exception("could not record a dead letter on %r: %s", queue, reason)

    def _dead_letter_current(self, reason: str) -> None:
        message = CurrentMessage.get_current_message()
        raw = message.encode() if message is not None else b""
        queue = message.queue_name if message is not None else "?"
        _logger.error("dead-lettered a message on %r: %s", queue, reason)
        self._dead_letter(queue, raw, reason)

    # -- housekeeping --------------------------------------------------------------------

    def start_housekeeping(self) -> None:
        if self._housekeeper is None:
            self._housekeeper = _Housekeeper(self)
            self._housekeeper.start()

    def stop_housekeeping(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.stop()
            self._housekeeper = None
        self.flush_confirmations()

    def flush_confirmations(self) -> None:
        with self._confirm_lock:
            pending, self._confirmations = self._confirmations, []
        if pending:
            try:
                confirm_published(self.store, pending)
            except StoreError:
                # The relay re-sends them: a duplicate message is harmless, a lost one is not.
                _logger.warning("could not confirm %d published message(s)", len(pending))

    def renew_leases(self) -> None:
        now = time.monotonic()
        with self._in_flight_lock:
            held = [step_id for step_id, until in self._in_flight.items() if now < until]
            stuck = [
                step_id for step_id, until in self._in_flight.items() if _LET_GO < until <= now
            ]
            for step_id in stuck:
                # It stays in flight (its commit will find the lease lost); said only once.
                self._in_flight[step_id] = _LET_GO
        for step_id in stuck:
            _logger.error(
                "step %s is past its time limit and still running; its lease is let "
                "go so another worker can run it",
                step_id,
            )
        lost = renew_leases(self.store, self.owner, held, self.config.lease_seconds)
        with self._in_flight_lock:
            # A step that committed meanwhile released its lease: that is not a loss.
            lost &= self._in_flight.keys()
            lost -= self._ending_leases
        for step_id in lost:
            _logger.warning("lease of step %s was lost; its result will be dropped", step_id)


_LET_GO = float("-inf")


def _preparer(actor: str) -> Preparer | None:
    registered = find_actor(actor)
    return None if registered is None else registered.options.prepare


def _async_actor(step: ClaimedStep) -> Actor[Any]:
    """The actor of a step a commit took for this worker (``Runtime._takes`` checked it)."""
    registered = find_actor(step.actor)
    assert registered is not None and registered.options.is_async
    return registered


def _handler_argument(step: ClaimedStep) -> Any:
    """The validated event, or for a join every event of the group."""
    if step.join:
        return [parse_event(e.type, e.data) for e in step.events]
    return parse_event(step.event.type, step.event.data)


# Mistakes in the handler's own declaration or return value: retrying cannot fix them.
_NEVER_RETRIED: tuple[type[BaseException], ...] = (EventError, TypeError)


def _emitted(registered: Actor[Any], result: Any) -> tuple[list[NewEvent], bool]:
    if result is None:
        return [], False
    if isinstance(result, Event):
        return [NewEvent(result.type, result.model_dump(mode="json"))], False
    if isinstance(result, list | tuple) and all(isinstance(item, Event) for item in result):
        return [NewEvent(e.type, e.model_dump(mode="json")) for e in result], True
    raise TypeError(
        f"actor {registered.options.name} returned {type(result).__name__}; return an Event, "
        "a list of Events, or None"
    )


# Coroutines run on the worker's event loop before it takes its first message (what async
# steps will need, made ready: the agents' HTTP clients), and once its async steps have
# drained, before the loop stops (what they opened on it is closed there).
_loop_openers: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = []
_loop_closers: list[Callable[[], Coroutine[Any, Any, None]]] = []


def on_loop_start(open_: Callable[[Runtime], Coroutine[Any, Any, None]]) -> None:
    """Run ``open_(runtime)`` on the worker's event loop before the worker takes messages."""
    _loop_openers.append(open_)


def on_loop_shutdown(close: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``close()`` on the worker's event loop when the worker stops."""
    _loop_closers.append(close)


class _EventLoopLifecycle(Middleware):
    """The event loop's set-up before the first message, and its drain and close at the end."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # After the AsyncIO middleware's (added before this one) has started the loop, and
        # before the consumers start: the first steps do not pay for the set-up.
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            return
        for open_ in _loop_openers:
            future = asyncio.run_coroutine_threadsafe(open_(self.runtime), loop_thread.loop)
            try:
                future.result(timeout=30)
            except Exception:
                future.cancel()
                # The steps that need it set it up themselves, and say what is wrong.
                _logger.warning("preparing %s on start-up failed", open_, exc_info=True)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # The steps still running hand what follows to the broker, for the other workers.
        self.runtime.runs_next_steps = False

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.drain(self.runtime.config.lease_seconds * 3)
        loop_thread = get_event_loop_thread()
        if loop_thread is None or not loop_thread.loop.is_running():
            return
        for close in _loop_closers:
            try:
                asyncio.run_coroutine_threadsafe(close(), loop_thread.loop).result(timeout=5)
            except Exception:
                _logger.warning("closing %s on shutdown failed", close, exc_info=True)


class _Housekeeper(threading.Thread):
    """Renews this process's leases and confirms publications in batches, off the hot path."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="baton-housekeeper", daemon=True)
        self.runtime = runtime
        self._stopped = threading.Event()

    def run(self) -> None:
        renew_every = max(self.runtime.config.lease_seconds / 3, 0.1)
        renewed_at = 0.0
        while not self._stopped.wait(0.05):
            try:
                self.runtime.flush_confirmations()
                now = time.monotonic()
                if now - renewed_at >= renew_every:
                    self.runtime.renew_leases()
                    renewed_at = now
            except Exception:
                _logger.exception("housekeeping failed; trying again")

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
