"""Hands committed messages to Redis off the committing thread: a batch of messages is one
pipelined round trip, and sending overlaps the next commit.

While Redis stalls, runs keep committing and their messages would pile up here without
bound. Past ``MAX_QUEUED`` messages waiting, a batch is left to the workers' relay instead,
which sends it from the store's outbox once Redis answers again: delayed, not lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from store import Publish
from workers import Runtime
from workers._broker import step_message

_logger = logging.getLogger("baton.gateway")
THREADS = 1
# Messages sent in one round trip before reporting them sent.
CHUNK = 256
# Messages waiting to be sent (or being sent) at most; see the module's docstring.
MAX_QUEUED = 100_000


class Sender:
    """A few threads draining one queue; reports the ids Redis took to ``on_sent``."""

    def __init__(
        self,
        runtime: Runtime,
        on_sent: Callable[[list[str]], None],
        threads: int = THREADS,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.runtime = runtime
        self._on_sent = on_sent
        self._queue: queue.SimpleQueue[list[Publish] | None] = queue.SimpleQueue()
        self.max_queued = max_queued
        # Messages submitted and not yet through a send attempt; and those left to the relay.
        self.queued = 0
        self.left_to_relay = 0
        # A stretch of batches left to the relay: said when it starts and when it ends.
        self._overflowing = False
        self._count_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"baton-gateway-sender-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, messages: list[Publish]) -> None:
        if not messages:
            return
        with self._count_lock:
            # A batch larger than the bound still goes when nothing waits.
            overflowing = self.queued > 0 and self.queued + len(messages) > self.max_queued
            first = overflowing and not self._overflowing
            if overflowing:
                self._overflowing = True
                self.left_to_relay += len(messages)
            else:
                self.queued += len(messages)
            waiting = self.queued
        if overflowing:
            if first:
                _logger.warning(
                    "Redis is not taking messages fast enough (%d waiting, at most %d kept "
                    "here): the next ones stay in the outbox for the workers' relay to send",
                    waiting,
                    self.max_queued,
                )
            return
        self._queue.put(messages)

    def _sent_or_failed(self, count: int) -> None:
        """``count`` messages are through a send attempt: their places are free again. The
        stretch of overflow ends once half the bound is."""
        with self._count_lock:
            self.queued -= count
            recovered = self._overflowing and self.queued <= self.max_queued // 2
            if recovered:
                self._overflowing = False
            left = self.left_to_relay
        if recovered:
            _logger.warning(
                "Redis is taking messages again; %d in all were left to the workers' relay", left
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            chunk = list(batch)
            while len(chunk) < CHUNK:
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    break
                if batch is None:
                    # Another thread's stop token: hand it back, finish this chunk.
                    self._queue.put(None)
                    break
                chunk += batch
            for start in range(0, len(chunk), CHUNK):
                part = chunk[start : start + CHUNK]
                try:
                    self._send(part)
                finally:
                    self._sent_or_failed(len(part))

    def _send(self, chunk: list[Publish]) -> None:
        try:
            self.runtime.broker.enqueue_many([step_message(message) for message in chunk])
        except Exception as error:
            # Their outbox rows stay: the workers' relay sends them.
            _logger.warning(
                "could not publish %d message(s) (%s); the relay will send them", len(chunk), error
            )
            return
        self._on_sent([message.message_id for message in chunk])
