"""The typed context a handler receives: who it is, where it is, and its run's memory."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from store import Store, read_memory, read_wait
from workers._durations import seconds
from workers._errors import Wait, WaitTimeout

if TYPE_CHECKING:
    from workers._runtime import Runtime

_logger = logging.getLogger("baton.step")


class Memory:
    """The run's key/value memory. Writes are kept until the step commits, then stored with it;
    a step that fails leaves no writes behind."""

    def __init__(self, store: Store, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._writes: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        found, value = self._lookup(key)
        if not found:
            raise KeyError(
                f"run {self._run_id} has no memory key {key!r}; an earlier step must set it "
                f"with ctx.memory[{key!r}] = ..., or read it with ctx.memory.get({key!r})"
            )
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError(f"memory keys are non-empty strings, got {key!r}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"memory value for {key!r} must be JSON-serialisable ({error}); store plain "
                "data, e.g. model.model_dump(mode='json')"
            ) from None
        self._writes[key] = value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key)[0]

    def get(self, key: str, default: Any = None) -> Any:
        found, value = self._lookup(key)
        return value if found else default

    def pending_writes(self) -> dict[str, Any]:
        return dict(self._writes)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("run memory is read by key; iterating it would load the whole history")

    def _lookup(self, key: str) -> tuple[bool, Any]:
        if key in self._writes:
            return True, self._writes[key]
        return read_memory(self._store, self._run_id, key)


class Context:
    """What a handler knows about the step it runs: ids, attempt, idempotency key, memory."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        run_id: str,
        step_id: str,
        actor: str,
        attempt: int,
        attempt_base: int = 0,
        traceparent: str,
        trace_id: str,
        recorded_from: str | None = None,
        prepared: Any = None,
    ) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.actor = actor
        self.attempt = attempt
        self.traceparent = traceparent
        self.trace_id = trace_id
        # Stable across retries and in-place replays: the step's own id.
        self.idempotency_key = step_id
        self.attempt_base = attempt_base
        # In a recorded fork: the parent run's step this one stands for. The built-in model
        # and tool calls reuse its recorded answer when their request is unchanged.
        self.recorded_from = recorded_from
        # Set while a tool runs on behalf of an agent (for its long-term memory).
        self.agent_name: str | None = None
        self.memory = Memory(runtime.store, run_id)
        self.logger = logging.LoggerAdapter(
            _logger, {"run_id": run_id, "step_id": step_id, "actor": actor}
        )
        self._runtime = runtime
        # What the actor's preparer read when the step was claimed (built-in actors).
        self._prepared = prepared
        self._writes: list[Callable[[Connection], None]] = []
        self._kept_writes: list[Callable[[Connection], None]] = []

    def defer_write(
        self, write: Callable[[Connection], None], *, even_on_failure: bool = False
    ) -> None:
        """Run ``write`` inside the transaction that commits this step (for built-in actors
        that keep rows of their own, such as the conversation). ``even_on_failure``: also
        inside the one that records its failure or parks it (what the attempt paid for and a
        retry reuses, such as a model's answer)."""
        self._writes.append(write)
        if even_on_failure:
            self._kept_writes.append(write)

    def pending_writes(self) -> list[Callable[[Connection], None]]:
        return list(self._writes)

    def _release(self) -> None:
        """Once the step's attempt has ended: drop its deferred writes and prepared inputs.
        A write's closure usually refers back to this context, a cycle that would keep the
        context and all it references (a model's request and answer, the window) alive until
        the garbage collector's next full pass instead of freeing them now."""
        self._writes.clear()
        self._kept_writes.clear()
        self._prepared = None

    def failure_writes(self) -> list[Callable[[Connection], None]]:
        """The writes kept whatever the attempt's outcome (``even_on_failure``)."""
        return list(self._kept_writes)

    def wait_for(self, name: str, *, timeout: float | str | None = None) -> dict[str, Any]:
        """The data of signal ``name`` sent to this run; parks the step until it arrives.

        The handler runs again from the top when the signal (or the timeout) comes, so the
        work before ``wait_for`` must be safe to repeat. Raises WaitTimeout after ``timeout``.
        """
        return self.wait_for_any((name,), timeout=timeout)[1]

    def wait_for_any(
        self, names: tuple[str, ...], *, timeout: float | str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """(name, data) of the first of ``names`` signalled to this run; parks until then."""
        timed_out = False
        for name in names:
            wait = read_wait(self._runtime.store, self.step_id, name)
            if wait is not None and wait.state == "satisfied":
                return name, dict(wait.data or {})
            timed_out = timed_out or (wait is not None and wait.state == "timed_out")
        if timed_out:
            raise WaitTimeout(
                f"no signal {' or '.join(names)} reached run {self.run_id} before the timeout"
            )
        deadline = None if timeout is None else time.time() + seconds(timeout, what="timeout")
        raise Wait(tuple(names), deadline)

    def sleep(self, duration: float | str, *, name: str = "sleep") -> None:
        """A durable timer: parks the step for ``duration``; survives worker restarts."""
        try:
            self.wait_for(f"timer:{name}", timeout=duration)
        except WaitTimeout:
            return
