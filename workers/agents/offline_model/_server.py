"""Running the offline model: blocking in the foreground, or on a free port in a daemon thread."""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import time
from collections.abc import Generator, Iterable, Mapping
from types import TracebackType
from typing import Any

import uvicorn

from ._app import create_app, state_of
from ._config import Fault, OfflineModelConfig, OfflineModelStats
from ._state import ServerState

__all__ = ["OfflineModelHandle", "serve", "start_in_thread"]

_STARTUP_TIMEOUT_SECONDS = 10.0
_GRACEFUL_SHUTDOWN_SECONDS = 5


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, state: ServerState, *, install_signal_handlers: bool
    ) -> None:
        super().__init__(config)
        self._state = state
        self._install_signal_handlers = install_signal_handlers

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signal handlers belong to the process's owner; a server in a thread must not take them.
        if not self._install_signal_handlers:
            yield
            return
        with super().capture_signals():
            yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Wake delayed and hanging requests first, or uvicorn waits for them to finish.
        self._state.begin_shutdown()
        await super().shutdown(sockets)


def _uvicorn_config(app: Any, host: str, port: int, *, quiet: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        lifespan="off",
        ws="none",
        backlog=4096,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        # In a thread, leave the process's logging configuration alone.
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        log_level="warning" if quiet else "info",
    )


def serve(
    host: str = "127.0.0.1", port: int = 8765, config: OfflineModelConfig | None = None
) -> None:
    """Serve the offline model until Ctrl+C or SIGTERM; blocks, and returns after Ctrl+C."""
    app = create_app(config)
    server = _Server(
        _uvicorn_config(app, host, port, quiet=False),
        state_of(app),
        install_signal_handlers=True,
    )
    # What this process imported (uvicorn's protocol modules too, loaded here) lives as long
    # as it does. Frozen, the collector's full passes skip it instead of holding every
    # answer due meanwhile back by ~0.1 s.
    server.config.load()
    gc.collect()
    gc.freeze()
    # uvicorn re-raises the signal it stopped for; Ctrl+C is how this is meant to end.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    finally:
        gc.unfreeze()


def start_in_thread(
    config: OfflineModelConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> OfflineModelHandle:
    """Serve the offline model from a daemon thread; returns once it accepts connections.

    `port=0` picks a free port; read it back from the handle's `base_url`.
    """
    app = create_app(config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise OSError(
            error.errno, f"cannot bind the offline model to {host}:{port}: {error.strerror}"
        ) from error
    bound_port = int(listener.getsockname()[1])
    server = _Server(
        _uvicorn_config(app, host, bound_port, quiet=True),
        state_of(app),
        install_signal_handlers=False,
    )
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [listener]},
        name=f"baton-offline-model-{bound_port}",
        daemon=True,
    )
    handle = OfflineModelHandle(host, bound_port, server, thread, listener, state_of(app))
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            handle.stop()
            raise RuntimeError(
                f"the offline model did not start on {host}:{bound_port} within "
                f"{_STARTUP_TIMEOUT_SECONDS}s; see the log of thread {thread.name!r}"
            )
        time.sleep(0.005)
    return handle


class OfflineModelHandle:
    """A running offline model server; `with start_in_thread() as model:` stops it on exit."""

    def __init__(
        self,
        host: str,
        port: int,
        server: _Server,
        thread: threading.Thread,
        listener: socket.socket,
        state: ServerState,
    ) -> None:
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{url_host}:{port}/v1"
        self._server = server
        self._thread = thread
        self._listener = listener
        self._state = state

    def stats(self) -> OfflineModelStats:
        """Counters over chat completions, as `GET /_offline/stats` returns them."""
        return self._state.stats()

    def reset_stats(self) -> None:
        """Zero the counters, as `POST /_offline/stats/reset` does."""
        self._state.reset_stats()

    def add_faults(self, faults: Iterable[Fault | Mapping[str, Any]]) -> int:
        """Queue faults for the next requests, as `POST /_offline/faults` does."""
        # Validate them all before queueing any, so a bad one leaves the queue as it was.
        validated = [f if isinstance(f, Fault) else Fault.model_validate(f) for f in faults]
        return self._state.add_faults(validated)

    def clear_faults(self) -> None:
        """Drop queued faults, as `DELETE /_offline/faults` does."""
        self._state.clear_faults()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: hanging requests are cut short; waits up to `timeout` for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._listener.close()

    def __enter__(self) -> OfflineModelHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
