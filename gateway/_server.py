"""Serving the gateway with uvicorn, in the foreground or on a thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.types import ASGIApp


def uvicorn_config(
    app: ASGIApp, host: str, port: int, *, log_level: str = "warning"
) -> uvicorn.Config:
    """The one uvicorn configuration the gateway runs with (``baton serve``, tests, P6)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        # Deliveries in flight finish and commit before the process exits.
        timeout_graceful_shutdown=10,
    )


def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGINT or SIGTERM."""
    uvicorn.Server(uvicorn_config(app, host, port, log_level="info")).run()


class ServerThread(threading.Thread):
    """uvicorn on a thread of this process; ``start`` returns once it accepts connections."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(name="baton-gateway", daemon=True)
        # Off the main thread uvicorn leaves signal handling to the main thread.
        self.server = uvicorn.Server(uvicorn_config(app, host, port))

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start; see its log")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def run(self) -> None:
        self.server.run()

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(timeout=15)
