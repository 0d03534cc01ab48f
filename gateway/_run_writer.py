"""The run writer: the process of its own that creates the gateway's runs (``python -m
gateway._run_writer``, started and watched by the gateway, ``gateway._writer_client``).

A delivery's run is a transaction of a few rows and index entries, a message to Redis and,
later, its confirmation: at the gateway's rates that is as much CPU as the HTTP work, and in
one process the two took turns for the GIL while the other core idled. Here the committing
thread, its group commit and its sender run in their own interpreter, beside the gateway's
event loop. The gateway sends batches of run requests down the writer's standard input and
reads each batch's answer (the run ids) from its standard output once the batch is
committed; messages are sent afterwards, and the relay covers a writer that dies first.

The writer exits when its input closes (the gateway stopped or died), once what it has read
is committed and sent.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from gateway import _frames
from gateway._batch import RunRequest
from gateway._committer import Committer
from store import CreatedRun, NewEvent, Route, Store, StoreUnavailable
from workers import Runtime

_logger = logging.getLogger("baton.gateway.writer")

# What a request's answer is, on the wire: ("ok", run id, created, subscribed) or
# ("error", "unavailable" | "failed", message).
Outcome = tuple[Any, ...]


def main() -> None:
    # Ctrl-C reaches the whole process group; the gateway ends the writer by closing its
    # input, once it has stopped taking requests, so that what was read is committed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Frames only on the pipe to the gateway: anything printed goes to the log instead.
    frames_out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    reader = _frames.Reader(sys.stdin.fileno())
    settings = reader.read()
    if settings is None:
        return
    try:
        store = Store(settings["database_url"])
        store.ping()
        runtime = Runtime(store, settings["redis_url"])
    except Exception as error:
        _frames.write(frames_out, ("failed", f"the run writer cannot start: {error}"))
        raise SystemExit(1) from None
    routes: dict[str, Sequence[Route]] = {}
    committer = Committer(runtime, lambda event_type: routes.get(event_type, ()))
    answers = _Answers(frames_out)
    # As in the gateway: what is alive now lives as long as the process, and a full
    # collection walking it would hold every commit up for tens of milliseconds.
    gc.collect()
    gc.freeze()
    committer.start()
    _frames.write(frames_out, ("ready", os.getpid()))
    try:
        while (frame := reader.read()) is not None:
            batch, items, batch_routes = frame
            routes.update(batch_routes)
            requests = [
                RunRequest(NewEvent(event_type, data), key, trace_id, root, answer=Future())
                for event_type, data, key, trace_id, root in items
            ]
            answers.expect(batch, requests)
            committer.submit(requests)
    finally:
        # What was read is committed and its messages sent before the writer exits.
        committer.stop()
        store.dispose()


class _Answers:
    """Writes a batch's answers to the gateway once every run of the batch has committed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def expect(self, batch: int, requests: list[RunRequest]) -> None:
        left = [len(requests)]

        def settled(_: Any) -> None:
            with self._lock:
                left[0] -= 1
                if left[0]:
                    return
                # If the gateway is gone, its runs are committed all the same.
                with contextlib.suppress(BrokenPipeError):
                    _frames.write(self.fd, (batch, [_outcome(r.answer) for r in requests]))

        for request in requests:
            request.answer.add_done_callback(settled)


def _outcome(answer: Any) -> Outcome:
    error = answer.exception()
    if error is None:
        created: CreatedRun = answer.result()
        return ("ok", created.run_id, created.created, created.subscribed)
    kind = "unavailable" if isinstance(error, StoreUnavailable) else "failed"
    return ("error", kind, str(error))


if __name__ == "__main__":
    main()
