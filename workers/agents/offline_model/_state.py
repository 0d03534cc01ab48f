"""The mutable state of one server: counters, queued faults, delays, cassette and shutdown."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from ._cassette import CassettePlayer
from ._config import Fault, OfflineModelConfig, OfflineModelStats

__all__ = ["ServerState", "WaitOutcome"]

WaitOutcome = Literal["elapsed", "shutdown", "disconnected"]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


class ServerState:
    """Shared by the request handlers (on the server's loop) and the handle (on any thread)."""

    def __init__(self, config: OfflineModelConfig) -> None:
        self.config = config
        self.player = CassettePlayer(config.cassette) if config.cassette is not None else None
        # A threading lock, not an asyncio one: the handle reads stats from other threads, and
        # nothing awaits while holding it.
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._jitter = random.Random(config.seed)
        self._requests = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._by_status: Counter[int] = Counter()
        self._shutting_down = False
        self._shutdown_event: asyncio.Event | None = None

    def begin_request(self) -> tuple[Fault | None, float]:
        """Count a chat completion in; returns its fault (if one is queued) and its delay."""
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            fault = self._faults.popleft() if self._faults else None
            delay = self.config.delay_seconds
            if self.config.delay_jitter_seconds:
                delay += self._jitter.uniform(0, self.config.delay_jitter_seconds)
        return fault, delay + (fault.delay_seconds if fault else 0.0)

    def end_request(self, status: int) -> None:
        """Count a chat completion out with the status it was answered with."""
        with self._lock:
            self._in_flight -= 1
            self._by_status[status] += 1

    def add_faults(self, faults: Iterable[Fault]) -> int:
        """Queue faults for the next requests, after those already queued; returns the count."""
        with self._lock:
            self._faults.extend(faults)
            return len(self._faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def stats(self) -> OfflineModelStats:
        """A snapshot of the counters."""
        with self._lock:
            return OfflineModelStats(
                requests=self._requests,
                in_flight=self._in_flight,
                peak_in_flight=self._peak_in_flight,
                by_status=dict(sorted(self._by_status.items())),
                faults_pending=len(self._faults),
                cassette_position=self.player.position if self.player is not None else None,
            )

    def reset_stats(self) -> None:
        """Zero the counters; requests still in flight stay counted as in flight."""
        with self._lock:
            self._requests = 0
            self._by_status.clear()
            self._peak_in_flight = self._in_flight

    def begin_shutdown(self) -> None:
        """Wake every delayed or hanging request; call on the server's event loop."""
        self._shutting_down = True
        if self._shutdown_event is not None:
            self._shutdown_event.set()

    async def wait(self, seconds: float, receive: Receive | None = None) -> WaitOutcome:
        """Sleep up to `seconds`, cut short by shutdown or (given `receive`) the client leaving."""
        if self._shutting_down:
            return "shutdown"
        if seconds <= 0:
            return "elapsed"
        # Created here so it belongs to the loop that serves the requests.
        if self._shutdown_event is None:
            self._shutdown_event = asyncio.Event()
        shutdown = asyncio.ensure_future(self._shutdown_event.wait())
        watchers: set[asyncio.Future[Any]] = {shutdown}
        disconnect = asyncio.ensure_future(_until_disconnect(receive)) if receive else None
        if disconnect is not None:
            watchers.add(disconnect)
        try:
            done, _ = await asyncio.wait(
                watchers, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if shutdown in done:
            return "shutdown"
        if disconnect is not None and disconnect in done:
            return "disconnected"
        return "elapsed"


async def _until_disconnect(receive: Receive) -> None:
    # The body has been read, so the next ASGI message for this request is its disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
