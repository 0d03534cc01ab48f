"""Hands committed messages to Redis off the committing thread, from a few threads at once:
each send is a Redis round trip, so sends overlap each other and the next commit."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from store import Publish
from workers import Runtime

_logger = logging.getLogger("baton.gateway")
THREADS = 3
# Messages one thread sends before reporting them sent.
CHUNK = 32


class Sender:
    """A few threads draining one queue; reports the ids Redis took to ``on_sent``."""

    def __init__(
        self, runtime: Runtime, on_sent: Callable[[list[str]], None], threads: int = THREADS
    ) -> None:
        self.runtime = runtime
        self._on_sent = on_sent
        self._queue: queue.SimpleQueue[Publish | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"baton-gateway-sender-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, messages: list[Publish]) -> None:
        for message in messages:
            self._queue.put(message)

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            chunk = [message]
            while len(chunk) < CHUNK:
                try:
                    message = self._queue.get_nowait()
                except queue.Empty:
                    break
                if message is None:
                    # Another thread's stop token: hand it back, finish this chunk.
                    self._queue.put(None)
                    break
                chunk.append(message)
            self._send(chunk)

    def _send(self, chunk: list[Publish]) -> None:
        sent: list[str] = []
        for message in chunk:
            try:
                self.runtime.send(message)
            except Exception as error:
                # Their outbox rows stay: the workers' relay sends them.
                _logger.warning(
                    "could not publish %d message(s) (%s); the relay will send them",
                    len(chunk) - len(sent),
                    error,
                )
                break
            sent.append(message.message_id)
        if sent:
            self._on_sent(sent)
