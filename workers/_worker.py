"""A worker: Dramatiq's consumer and worker threads, plus housekeeping and maintenance."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable

import dramatiq

from workers._errors import WorkerError
from workers._maintenance import Maintenance
from workers._runtime import Runtime
from workers._tracing import configure_tracing, flush_tracing

_logger = logging.getLogger("baton.worker")


def import_modules(modules: Iterable[str]) -> None:
    """Import the modules that declare actors; a clear error when one cannot be imported."""
    if "" not in sys.path and "." not in sys.path:
        # `baton worker examples.chain` is run from the project folder, like `python -m`.
        sys.path.insert(0, "")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise WorkerError(
                f"cannot import actor module {name!r}: {error}; run from the folder that "
                "contains it or install it, and name it as you would in an import statement"
            ) from error


# Dramatiq threads per worker process, unless told otherwise. Twice Dramatiq's own 8: a sync
# step spends most of its time waiting (for the store's writer and its group commit, for the
# GIL, for whatever its handler calls), not computing, so more of them overlap. Measured on 2
# cores, alternating: no-op step throughput (P1) the same with 16 as with 8; 300 agent runs
# (P5) drained in a median 2.84 s with 16 against 3.01 s with 8 (2.90 s with 12; 24 and 32
# no faster, and more variable).
WORKER_THREADS = 16


class Worker:
    """Everything one worker process runs; ``start`` returns once the threads are up."""

    def __init__(
        self, runtime: Runtime, *, threads: int = WORKER_THREADS, maintenance: bool = True
    ) -> None:
        if threads < 1:
            raise WorkerError(f"a worker needs at least one thread, got {threads}")
        self.runtime = runtime
        runtime.bind()
        self._worker = dramatiq.Worker(
            runtime.broker,
            worker_threads=threads,
            worker_timeout=runtime.config.worker_idle_timeout_ms,
        )
        self.maintenance = Maintenance(runtime) if maintenance else None

    def start(self) -> None:
        configure_tracing("baton-worker")
        self.runtime.broker.ping()
        self.runtime.record_catalog()
        self.runtime.start_housekeeping()
        self._worker.start()
        if self.maintenance is not None:
            self.maintenance.start()
        _logger.info("worker %s started", self.runtime.owner)

    def stop(self, timeout_ms: int = 30_000) -> None:
        if self.maintenance is not None:
            self.maintenance.stop()
        # Handed-off async steps drain inside this, once the consumers have stopped.
        self._worker.stop(timeout=timeout_ms)
        self.runtime.stop_housekeeping()
        flush_tracing()
        _logger.info("worker %s stopped", self.runtime.owner)
