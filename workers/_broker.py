"""The Dramatiq broker, wired in this one place.

Redis carries pointers only: (step id, run id, trace context). Two departures from
Dramatiq's stock Redis broker, both small:

- a message may arrive with its Redis message id already chosen (recorded on the step in the
  store) so the reconciler can ask Redis whether the step's message still exists;
- a message that cannot be decoded is dead-lettered with its raw bytes instead of crashing the
  consumer, which would otherwise restart and fetch the same bytes again and again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import DecodeError
from dramatiq.middleware import (
    AsyncIO,
    CurrentMessage,
    Middleware,
    ShutdownNotifications,
    TimeLimit,
)

from store import Publish
from workers._errors import WorkerError

NAMESPACE = "baton"
_logger = logging.getLogger("baton.broker")

MalformedHandler = Callable[[str, bytes, str], None]


class Broker(RedisBroker):
    """RedisBroker that honours a preset message id and dead-letters undecodable messages."""

    def __init__(
        self,
        *,
        url: str,
        on_malformed: MalformedHandler | None = None,
        heartbeat_timeout_ms: int = 30_000,
        **options: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            url=url,
            namespace=NAMESPACE,
            middleware=[
                CurrentMessage(),
                TimeLimit(),
                ShutdownNotifications(),
                AsyncIO(),
            ],
            heartbeat_timeout=heartbeat_timeout_ms,
            # Our reconciler runs queue maintenance itself, every interval.
            maintenance_chance=0,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
            **options,
        )
        self.on_malformed = on_malformed

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _Consumer

    def enqueue(
        self, message: dramatiq.Message[Any], *, delay: int | None = None
    ) -> dramatiq.Message[Any]:
        message_id = message.options.get("redis_message_id")
        if message_id is None:
            return super().enqueue(message, delay=delay)
        queue_name = message.queue_name
        if delay is not None and delay > 0:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
        self.emit_before("enqueue", message, delay)
        self.do_enqueue(queue_name, message_id, message.encode())
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(self, messages: Sequence[tuple[dramatiq.Message[Any], int | None]]) -> None:
        """``enqueue`` each (message, delay) with a preset message id, in one round trip.

        Per queue, the messages' bodies (one HSET) and then their ids (one RPUSH), all in one
        MULTI: what Dramatiq's dispatch script writes for each "enqueue", as two commands a
        queue instead of a script call a message, which cost the gateway's writer a quarter of
        its time. All or nothing as far as the caller knows: on an error none counts as sent
        (a message Redis did take is then sent again later, which a step's claim absorbs).
        """
        bodies: dict[str, dict[str, bytes]] = {}
        sent = []
        for message, delay in messages:
            queue_name = message.queue_name
            if delay is not None and delay > 0:
                queue_name = dq_name(queue_name)
                message = message.copy(
                    queue_name=queue_name, options={"eta": current_millis() + delay}
                )
            self.emit_before("enqueue", message, delay)
            bodies.setdefault(queue_name, {})[message.options["redis_message_id"]] = (
                message.encode()
            )
            sent.append((message, delay))
        pipe = self.client.pipeline(transaction=True)
        for queue_name, by_id in bodies.items():
            # Dramatiq's layout: $namespace:$queue is the list of ids, .msgs the bodies.
            queue_key = f"{self.namespace}:{queue_name}"
            pipe.hset(f"{queue_key}.msgs", mapping=by_id)  # type: ignore[arg-type]
            pipe.rpush(queue_key, *by_id)
        pipe.execute()
        for message, delay in sent:
            self.emit_after("enqueue", message, delay)

    def message_exists(self, queue_name: str, message_ids: list[str]) -> list[bool]:
        """Whether Redis still holds each message, queued or delayed (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hexists(f"{NAMESPACE}:{queue_name}.msgs", message_id)
            pipe.hexists(f"{NAMESPACE}:{dq_name(queue_name)}.msgs", message_id)
        answers = pipe.execute()
        return [bool(answers[i] or answers[i + 1]) for i in range(0, len(answers), 2)]

    def run_maintenance(self, queue_name: str) -> None:
        """Requeue what dead consumers had fetched (Dramatiq's own script, run on purpose)."""
        self.scripts["dispatch"](
            args=[
                "qsize",
                current_millis(),
                queue_name,
                self.broker_id,
                self.heartbeat_timeout,
                self.dead_message_ttl,
                1,
                self._max_unpack_size(),  # type: ignore[no-untyped-call]
            ],
            keys=[self.namespace],
        )

    def ping(self) -> None:
        try:
            self.client.ping()
        except Exception as error:
            raise WorkerError(f"cannot reach Redis: {error}") from error


def step_message(publish: Publish) -> tuple[dramatiq.Message[Any], int | None]:
    """The message that hands a committed step to its actor, and its delay: pointers only."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=publish.queue,
        actor_name=publish.actor,
        args=(publish.step_id, publish.run_id, publish.traceparent),
        kwargs={},
        options={"redis_message_id": publish.message_id},
    )
    return message, publish.delay_ms or None


# While messages keep coming, an empty queue is looked at again within this many ms;
# after a quiet second the consumer backs off to its idle timeout. A chain's next step
# lands a few ms after its queue was last seen empty, and the idle backoff (up to 100 ms)
# would make it wait out a long sleep.
_BUSY_TIMEOUT_MS = 10
_BUSY_FOR_SECONDS = 1.0


class _Consumer(_RedisConsumer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)  # type: ignore[no-untyped-call]
        self._idle_timeout = self.timeout
        self._last_message = 0.0

    def __next__(self) -> Any:
        while True:
            busy = time.monotonic() - self._last_message < _BUSY_FOR_SECONDS
            self.timeout = min(self._idle_timeout, _BUSY_TIMEOUT_MS) if busy else self._idle_timeout
            try:
                message = super().__next__()  # type: ignore[no-untyped-call]
            except DecodeError as error:
                self._dead_letter(
                    error.data if isinstance(error.data, bytes) else str(error.data).encode(),
                    str(error.error),
                )
                continue
            if message is not None:
                self._last_message = time.monotonic()
            return message

    def _dead_letter(self, raw: bytes, reason: str) -> None:
        """Find the undecodable message among the ones this consumer fetched, keep it, ack it."""
        broker: Broker = self.broker
        acks_key = f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}"
        messages_key = f"{broker.namespace}:{self.queue_name}.msgs"
        for message_id in broker.client.smembers(acks_key):
            if broker.client.hget(messages_key, message_id) == raw:
                if broker.on_malformed is not None:
                    broker.on_malformed(self.queue_name, raw, f"undecodable message: {reason}")
                broker.do_ack(self.queue_name, message_id)
                _logger.error("dead-lettered an undecodable message on %r", self.queue_name)
                return
        # Not found: it was acked or requeued meanwhile; nothing to keep.
        time.sleep(0)


class DeadLetterUnknownActors(Middleware):
    """A message for an actor this worker does not know is kept in the store, not lost."""

    def __init__(self, on_malformed: MalformedHandler) -> None:
        self.on_malformed = on_malformed

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.on_malformed(
            message.queue_name,
            message.encode(),
            f"nacked: no actor {message.actor_name!r} in this worker, or it failed outside a step",
        )
