"""Hands committed messages to Redis off the committing thread: a batch of messages is one
pipelined round trip, and sending overlaps the next commit."""

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


class Sender:
    """A few threads draining one queue; reports the ids Redis took to ``on_sent``."""

    def __init__(
        self, runtime: Runtime, on_sent: Callable[[list[str]], None], threads: int = THREADS
    ) -> None:
        self.runtime = runtime
        self._on_sent = on_sent
        self._queue: queue.SimpleQueue[list[Publish] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"baton-gateway-sender-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, messages: list[Publish]) -> None:
        if messages:
            self._queue.put(messages)

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
                self._send(chunk[start : start + CHUNK])

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
