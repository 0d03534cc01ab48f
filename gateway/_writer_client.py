"""The gateway's end of its run writer (``gateway._run_writer``): it starts the writer, sends
it the runs to create and settles each request with the writer's answer.

Everything here runs on the gateway's event loop: requests are written to the writer's input
as they are handed over (a thread's go through ``call_soon_threadsafe``) and answers are
read as they come.

A writer that dies is started again. What it had not answered, and what arrives meanwhile,
waits for the new writer; a request with a dedupe key (every webhook delivery) is sent to it
again, since a run the dead writer did commit is then found by its key, not made twice. A
request without one fails with StoreUnavailable (503), as its outcome is unknown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gateway import _frames
from gateway._batch import Answer, RunRequest
from store import CreatedRun, Route, StoreUnavailable
from workers import Runtime

_logger = logging.getLogger("baton.gateway")
# How long the writer may take to start (imports, the store, Redis) before the gateway gives up.
START_TIMEOUT_SECONDS = 60.0
# How long a stopping gateway waits for the writer to commit and send what it has.
STOP_TIMEOUT_SECONDS = 30.0
# Waits between attempts to start a writer again after one died: first, and the longest.
RESTART_AFTER_SECONDS = (0.2, 10.0)


class WriterUnavailable(StoreUnavailable):
    """The run writer is not running (it died and is being started again)."""


class RunWriter:
    """Sends run requests to the writer process and settles them with its answers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        # Batches written to the writer and not answered yet, by number.
        self._unanswered: dict[int, list[RunRequest]] = {}
        self._batches = 0
        self._stopping = False
        # The routes of each event type, as this writer process was last told them.
        self._routed: dict[str, Sequence[Route]] = {}
        # Requests waiting for a writer being started again.
        self._held: list[RunRequest] = []

    @property
    def pid(self) -> int | None:
        """The writer process's id, while one runs."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether a writer process is up to take runs (for ``/readyz``)."""
        return self._process is not None and not self._stopping

    async def start(self) -> None:
        """Start the writer; raises StoreUnavailable, saying why, when it cannot start."""
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    async def stop(self) -> None:
        """Let the writer commit and send what it has, then end it."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        held, self._held = self._held, []
        _settle_all(held, WriterUnavailable(_STOPPING))
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            _logger.error(
                "the run writer did not stop within %g s; killing it", STOP_TIMEOUT_SECONDS
            )
            process.kill()
            await process.wait()
        if self._reading is not None:
            await self._reading

    def submit(self, requests: list[RunRequest]) -> None:
        """Hand runs to the writer (on the event loop); each answer is settled once its run
        has committed."""
        process = self._process
        if self._stopping:
            _settle_all(requests, WriterUnavailable(_STOPPING))
            return
        if process is None:
            if self._restarting is not None and not self._restarting.done():
                self._held += requests
            else:
                _settle_all(requests, WriterUnavailable(_DOWN))
            return
        self._batches += 1
        self._unanswered[self._batches] = requests
        routes: dict[str, Sequence[Route]] = {}
        items = []
        for request in requests:
            trigger = request.trigger
            current = self.runtime.route(trigger.type)
            if self._routed.get(trigger.type) != current:
                routes[trigger.type] = self._routed[trigger.type] = current
            items.append(
                (
                    trigger.type,
                    trigger.data,
                    request.dedupe_key,
                    request.trace_id,
                    request.root_span_id,
                )
            )
        assert process.stdin is not None
        process.stdin.write(_frames.encode((self._batches, items, routes)))

    def submit_threadsafe(self, requests: list[RunRequest]) -> None:
        """``submit`` from a thread other than the event loop's."""
        loop = self._loop
        if loop is None or loop.is_closed():
            _settle_all(requests, WriterUnavailable(_DOWN))
            return
        loop.call_soon_threadsafe(self.submit, requests)

    # -- the writer process ------------------------------------------------------------------

    async def _spawn(self) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway._run_writer",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as error:
            raise StoreUnavailable(f"the gateway's run writer did not start: {error}") from None
        try:
            hello = await self._handshake(process)
        except BaseException:
            # Cancelled (the gateway is stopping) or failed midway: no writer is left behind.
            if process.returncode is None:
                process.kill()
            await process.wait()
            raise
        if hello is None or hello[0] != "ready":
            if process.returncode is None:
                process.kill()
            await process.wait()
            why = "it exited at once; see its log above" if hello is None else hello[1]
            raise StoreUnavailable(f"the gateway's run writer did not start: {why}")
        self._process = process
        self._routed = {}
        self._reading = asyncio.create_task(self._read_answers(process))

    async def _handshake(self, process: asyncio.subprocess.Process) -> Any:
        """Send the writer its settings; its first frame says whether it is ready."""
        assert process.stdin is not None and process.stdout is not None
        store = self.runtime.store
        process.stdin.write(
            _frames.encode({"database_url": store.url, "redis_url": self.runtime.redis_url})
        )
        try:
            return await asyncio.wait_for(_read_frame(process.stdout), START_TIMEOUT_SECONDS)
        except TimeoutError:
            return ("failed", f"it did not start within {START_TIMEOUT_SECONDS:g} s")

    async def _read_answers(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while (frame := await _read_frame(process.stdout)) is not None:
            batch, outcomes = frame
            for request, outcome in zip(self._unanswered.pop(batch), outcomes, strict=True):
                _settle(request.answer, _answer_of(outcome))
        code = await process.wait()
        self._process = None
        unanswered, self._unanswered = self._unanswered, {}
        again = [r for batch in unanswered.values() for r in batch if r.dedupe_key is not None]
        unknown = [r for batch in unanswered.values() for r in batch if r.dedupe_key is None]
        _settle_all(
            unknown,
            WriterUnavailable(
                f"the gateway's run writer stopped (exit code {code}) before it said whether "
                "this run was created; look for it before starting it again"
            ),
        )
        if self._stopping:
            _settle_all(again, WriterUnavailable(_STOPPING))
            return
        _logger.error("the run writer stopped (exit code %s); starting another", code)
        self._held = again + self._held
        self._restarting = asyncio.create_task(self._restart())

    async def _restart(self) -> None:
        wait, longest = RESTART_AFTER_SECONDS
        while not self._stopping:
            await asyncio.sleep(wait)
            try:
                await self._spawn()
            except Exception as error:
                # What waited cannot wait for the next try: the store itself is away, or
                # the machine cannot start a process. Requests that come meanwhile wait
                # for the next try; /readyz says the gateway is not ready until one works.
                held, self._held = self._held, []
                _settle_all(
                    held,
                    error
                    if isinstance(error, StoreUnavailable)
                    else WriterUnavailable(f"{_DOWN}: {error}"),
                )
                _logger.error("%s; trying again in %g s", error, min(wait * 2, longest))
                wait = min(wait * 2, longest)
                continue
            held, self._held = self._held, []
            if held:
                self.submit(held)
            return


_DOWN = "the gateway's run writer is not running; retry shortly"
_STOPPING = "the gateway is stopping; retry against another replica or once it is back"


async def _read_frame(stream: asyncio.StreamReader) -> Any:
    try:
        header = await stream.readexactly(_frames.HEADER_SIZE)
        return _frames.decode(await stream.readexactly(_frames.payload_size(header)))
    except asyncio.IncompleteReadError:
        return None


def _answer_of(outcome: tuple[Any, ...]) -> CreatedRun | BaseException:
    if outcome[0] == "ok":
        _, run_id, created, subscribed = outcome
        return CreatedRun(run_id, created, [], subscribed)
    _, kind, message = outcome
    return StoreUnavailable(message) if kind == "unavailable" else RuntimeError(message)


def _settle_all(requests: list[RunRequest], error: BaseException) -> None:
    for request in requests:
        _settle(request.answer, error)


def _settle(answer: Answer, outcome: CreatedRun | BaseException) -> None:
    # On the event loop: its futures are settled directly; a thread's are thread-safe.
    with contextlib.suppress(asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        if answer.done():
            return  # The caller went away; the run was committed all the same.
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)
