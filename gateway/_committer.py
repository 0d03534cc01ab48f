"""The run writer's committing thread: commits runs in batches, hands their messages to the
sender, and confirms the ones Redis took with its next commit (or on its own when idle).

A request is answered once its run has committed; its messages are sent a moment later. If
the process dies in between, the outbox rows are still in the store and the workers' relay
sends them: nothing is lost, only delayed by the relay's interval.
"""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.exc import IntegrityError

from gateway._batch import RunRequest, create_runs, settle
from gateway._sender import Sender
from store import CreatedRun, Publish, Router, confirm_published, create_run
from workers import Runtime

_logger = logging.getLogger("baton.gateway")
MAX_BATCH = 256
# Outbox rows deleted per statement: well under SQLite's limit on bound parameters.
MAX_CONFIRM = 1000
# With nothing more to commit, sent messages are confirmed on their own after this long.
CONFIRM_IDLE_SECONDS = 0.05


class Committer(threading.Thread):
    """Creates the gateway's runs, a batch per transaction, and has their messages sent."""

    def __init__(self, runtime: Runtime, router: Router) -> None:
        super().__init__(name="baton-gateway-committer", daemon=True)
        self.runtime = runtime
        # The gateway says which actors each type's runs start (the writer imports none).
        self.router = router
        self._queue: queue.SimpleQueue[list[RunRequest] | None] = queue.SimpleQueue()
        # Message ids Redis has taken whose outbox rows are not deleted yet.
        self._sent: list[str] = []
        self._sent_lock = threading.Lock()
        self.sender = Sender(runtime, self._note_sent)

    def start(self) -> None:
        self.sender.start()
        super().start()

    def submit(self, requests: list[RunRequest]) -> None:
        """Queue runs to create; each request's answer is settled once its run committed."""
        self._queue.put(requests)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit and send what is queued, then stop."""
        if self.is_alive():
            self._queue.put(None)
            self.join(timeout)

    def run(self) -> None:
        stopping = False
        while not stopping:
            try:
                job = self._queue.get(timeout=CONFIRM_IDLE_SECONDS)
            except queue.Empty:
                self._confirm()
                continue
            requests: list[RunRequest] = []
            while True:
                if job is None:
                    stopping = True
                else:
                    requests += job
                if len(requests) >= MAX_BATCH:
                    break
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
            if requests:
                try:
                    self.sender.submit(self._commit(requests))
                except Exception as error:
                    # A dead committer would leave every later request waiting forever.
                    _logger.exception("committing %d run(s) failed", len(requests))
                    settle(requests, [error] * len(requests))
        self.sender.stop()
        self._confirm()

    def _commit(self, requests: list[RunRequest]) -> list[Publish]:
        created: list[CreatedRun | BaseException]
        confirmed = self._take_sent()
        try:
            created = list[CreatedRun | BaseException](
                create_runs(self.runtime.store, requests, self.router, published=confirmed)
            )
        except IntegrityError:
            self._note_sent(confirmed)
            # Another process committed one of the keys since our query: one by one, each
            # request then finds its run or makes it.
            created = [self._one(request) for request in requests]
        except Exception as error:
            self._note_sent(confirmed)
            _logger.warning("could not create %d run(s): %s", len(requests), error)
            created = [error] * len(requests)
        settle(requests, created)
        messages: list[Publish] = []
        for answer in created:
            if not isinstance(answer, BaseException):
                messages += answer.publish
        return messages

    def _one(self, request: RunRequest) -> CreatedRun | BaseException:
        for _ in range(2):
            try:
                return create_run(
                    self.runtime.store,
                    request.trigger,
                    self.router,
                    dedupe_key=request.dedupe_key,
                    trace_id=request.trace_id,
                    root_span_id=request.root_span_id,
                )
            except IntegrityError:
                # The same race on this key alone: the second look finds the run.
                continue
            except Exception as error:
                return error
        return RuntimeError(f"could not create or find the run for {request.dedupe_key!r}")

    def _note_sent(self, message_ids: list[str]) -> None:
        with self._sent_lock:
            self._sent += message_ids

    def _take_sent(self) -> list[str]:
        with self._sent_lock:
            taken, self._sent = self._sent[:MAX_CONFIRM], self._sent[MAX_CONFIRM:]
        return taken

    def _confirm(self) -> None:
        while confirmed := self._take_sent():
            try:
                confirm_published(self.runtime.store, confirmed)
            except Exception as error:
                # The relay re-sends them: a duplicate message is harmless, a lost one is not.
                _logger.warning(
                    "could not confirm %d published message(s): %s", len(confirmed), error
                )
                return
