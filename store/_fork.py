"""Forks: a new run that keeps everything causally before one step of its parent, then
re-executes that step (its input optionally edited) and all that follows.

The fork copies its history instead of referencing the parent's rows, so every read on a
step's hot path (claim, memory, the conversation window) stays a read of the fork's own rows
and the parent is never touched. The copies get the ids the fork would have given them had it
run them itself: the trigger's id from the fork's run id, then event = H(cause step,
position), step = H(event, actor), join = H(group, actor). Steps the fork appends later meet
the copied rows exactly as in any run. Every fork step keeps the parent's step at the same
causal position in ``steps.origin_step_id``; a recorded fork reuses that step's recordings.

What is kept: the step's causal ancestors (for a join, those of every arrival), as succeeded
history with their attempts, recorded model and tool calls and waits; every event they
emitted; the memory versions they wrote; the agent loops they opened and the conversation
rows they appended. Everything else re-executes: the step itself, and the other handlers of
the kept events (branches that ran beside the step in the parent), which a join may need.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from store import _ids
from store._appending import _step_row, add_to_outbox, append_lifecycle, settle_run
from store._engine import Store
from store._errors import InvalidState, NotFound
from store._history import History, Renamer
from store._model import RUN_RUNNING, STEP_COLLECTING, STEP_PENDING, Publish
from store._operations import FORK, Operator, record_operation
from store._recorded import supply_response
from store._tables import (
    agent_loops,
    conversation,
    events,
    join_arrivals,
    memory,
    model_calls,
    runs,
    step_attempts,
    steps,
    tool_calls,
    waits,
)


@dataclass(frozen=True)
class Forked:
    run_id: str
    parent_run_id: str
    from_step_id: str  # the parent's step
    step_id: str  # its counterpart in the fork, which runs again
    operation_id: str | None
    kept_steps: int
    publish: list[Publish]


def fork_run(
    store: Store,
    run_id: str,
    from_step_id: str,
    *,
    reason: str,
    operator: Operator | None = None,
    edit: Mapping[str, Any] | None = None,
    edit_output: Mapping[str, Any] | None = None,
    recorded: bool = False,
    now: float | None = None,
) -> Forked:
    """Create the fork in one transaction; publish ``Forked.publish`` after it returns.

    ``edit`` is merged into the step's input event (top-level fields). ``edit_output``, for
    a model-call step, is merged into the message of the parent's recorded response, which the
    fork's step then uses instead of asking the model.
    """
    now = time.time() if now is None else now
    fork_id = _ids.new_run_id(now)
    trace_id = _ids.new_trace_id()
    with store.transaction() as connection:
        history = History(connection, run_id)
        start = history.steps.get(from_step_id)
        if start is None:
            raise NotFound(
                f"run {run_id} has no step {from_step_id!r}; see its steps with "
                f"`baton runs show {run_id}`"
            )
        if start.state == STEP_COLLECTING:
            raise InvalidState(
                f"step {from_step_id} is a join still collecting its events; fork from one of "
                "the steps before it"
            )
        if edit and history.is_join(from_step_id):
            raise InvalidState(
                f"step {from_step_id} is a join: its input is several events; fork from the "
                "step whose event you want to edit"
            )
        kept = history.ancestors(from_step_id)
        rename = Renamer(history, _ids.trigger_event_id(fork_id))
        copier = _Copier(connection, history, rename, fork_id, trace_id, kept, now)
        copier.copy_events(edit_event=start.event_id if edit else None, edit=edit or {})
        publish = copier.copy_steps()
        copier.copy_records()
        new_step_id = rename(from_step_id)
        if edit_output:
            supply_response(
                connection,
                history.steps[from_step_id],
                new_step_id=new_step_id,
                run_id=fork_id,
                loops=copier.loops,
                edit_output=edit_output,
            )
        usage = copier.copy_agents()
        run = history.run
        connection.execute(
            insert(runs).values(
                id=fork_id,
                status=RUN_RUNNING,
                trigger_type=run.trigger_type,
                trigger_event_id=rename(run.trigger_event_id),
                agent=run.agent,
                parent_run_id=run_id,
                forked_from_step_id=from_step_id,
                recorded=recorded,
                trace_id=trace_id,
                created_at=now,
                updated_at=now,
                **usage,
            )
        )
        add_to_outbox(connection, publish, now)
        logged = {
            "reason": reason,
            "parent_run_id": run_id,
            "from_step_id": from_step_id,
            "recorded": recorded,
            "edited": bool(edit or edit_output),
            **(operator.log_fields() if operator else {}),
        }
        append_lifecycle(connection, fork_id, "baton.run.forked", logged, None, now)
        settle_run(connection, fork_id, RUN_RUNNING, now)
        if operator is not None:
            record_operation(
                connection,
                operator,
                kind=FORK,
                reason=reason,
                parameters={
                    "run_id": run_id,
                    "from_step_id": from_step_id,
                    "edit": dict(edit) if edit else None,
                    "edit_output": dict(edit_output) if edit_output else None,
                    "recorded": recorded,
                },
                outcome={
                    "fork_run_id": fork_id,
                    "step_id": new_step_id,
                    "kept_steps": len(kept),
                    "rerun_steps": len(publish),
                },
                now=now,
            )
    return Forked(
        run_id=fork_id,
        parent_run_id=run_id,
        from_step_id=from_step_id,
        step_id=new_step_id,
        operation_id=operator.operation_id if operator else None,
        kept_steps=len(kept),
        publish=publish,
    )


class _Copier:
    """Writes the fork's copy of the parent's kept history, inside the fork's transaction."""

    def __init__(
        self,
        connection: Connection,
        history: History,
        rename: Renamer,
        fork_id: str,
        trace_id: str,
        kept: set[str],
        now: float,
    ) -> None:
        self.connection = connection
        self.history = history
        self.rename = rename
        self.fork_id = fork_id
        self.trace_id = trace_id
        self.kept = kept
        self.now = now
        # The trigger and every event a kept step emitted (signals aside): the fork's log.
        self.copied_events = [
            event
            for event in sorted(history.events.values(), key=lambda e: (e.created_at, e.position))
            if event.id == history.run.trigger_event_id
            or (event.cause_step_id in kept and event.position >= 0)
        ]
        self.copied_event_ids = {event.id for event in self.copied_events}
        self.loops: dict[str, str] = {}  # parent loop id -> fork loop id

    def ids(self) -> dict[str, str]:
        """Every parent id the copies mention and its fork counterpart."""
        return {**self.rename.new, **self.loops}

    def copy_events(self, *, edit_event: str | None, edit: Mapping[str, Any]) -> None:
        self._find_loops()
        # Name every copy first: an event's data and groups may mention any kept id.
        for event in self.copied_events:
            self.rename(event.id)
        for step_id in self.kept:
            self.rename(step_id)
        ids = self.ids()
        rows = []
        for event in self.copied_events:
            data = _renamed(event.data, ids)
            if event.id == edit_event:
                data = {**data, **edit}
            rows.append(
                {
                    "id": self.rename(event.id),
                    "run_id": self.fork_id,
                    "type": event.type,
                    "data": data,
                    "cause_step_id": self.rename(event.cause_step_id)
                    if event.cause_step_id
                    else None,
                    "position": event.position,
                    "groups": _renamed(event.groups, ids),
                    "created_at": event.created_at,
                }
            )
        if rows:
            self.connection.execute(insert(events), rows)

    def copy_steps(self) -> list[Publish]:
        """Kept steps as succeeded history; the other handlers of kept events ready to run."""
        history, rename = self.history, self.rename
        kept_rows: list[dict[str, Any]] = []
        fresh_rows: list[dict[str, Any]] = []
        publish: list[Publish] = []
        joins: list[str] = []
        for event in self.copied_events:
            for step in history.plain_steps_of.get(event.id, []):
                if step.id in self.kept:
                    kept_rows.append(self._kept_row(step))
                else:
                    fresh_rows.append(self._fresh_row(step, publish, STEP_PENDING))
            joins += [j for j in history.joins_of.get(event.id, []) if j not in joins]
        arrival_rows = []
        for join_id in joins:
            join = history.steps[join_id]
            arrived = [a for a in history.arrivals[join_id] if a.event_id in self.copied_event_ids]
            arrival_rows += [
                {"step_id": rename(join_id), "event_id": rename(a.event_id), "position": a.position}
                for a in arrived
            ]
            if join_id in self.kept:
                kept_rows.append(self._kept_row(join))
                continue
            complete = len(arrived) == join.join_expected
            row = self._fresh_row(
                join,
                publish,
                STEP_PENDING if complete else STEP_COLLECTING,
                event_id=arrived[-1].event_id,
            )
            row["join_arrived"] = len(arrived)
            fresh_rows.append(row)
        for rows in (kept_rows, fresh_rows):
            if rows:
                self.connection.execute(insert(steps), rows)
        if arrival_rows:
            self.connection.execute(insert(join_arrivals), arrival_rows)
        return publish

    def _kept_row(self, step: Any) -> dict[str, Any]:
        row = dict(step._mapping)
        row.update(
            id=self.rename(step.id),
            run_id=self.fork_id,
            event_id=self.rename(step.event_id),
            lease_owner=None,
            lease_expires_at=None,
            message_id=None,
            traceparent=self._traceparent(step.event_id),
            discarded_at=None,
            origin_step_id=step.id,
        )
        return row

    def _fresh_row(
        self, step: Any, publish: list[Publish], state: str, event_id: str | None = None
    ) -> dict[str, Any]:
        new_id = self.rename(step.id)
        ready = state == STEP_PENDING
        message_id = _ids.new_message_id() if ready else None
        parent = self._traceparent(event_id or step.event_id)
        row = _step_row(
            new_id,
            self.fork_id,
            self.rename(event_id or step.event_id),
            step.actor,
            step.queue,
            step.max_retries,
            parent,
            message_id,
            self.now,
            state=state,
            join_expected=step.join_expected,
            origin_step_id=step.id,
        )
        if message_id is not None:
            publish.append(
                Publish(message_id, new_id, self.fork_id, step.actor, step.queue, parent)
            )
        return row

    def _traceparent(self, event_id: str) -> str:
        cause = self.history.events[event_id].cause_step_id
        span = _ids.span_id(self.rename(cause)) if cause else self.trace_id[:16]
        return _ids.traceparent(self.trace_id, span)

    def copy_records(self) -> None:
        """The kept steps' attempts, waits (and the signals that resolved them), and memory."""
        rename, kept = self.rename, list(self.kept)
        if not kept:
            memory_rows = self._select(memory, memory.c.step_id.is_(None), order=memory.c.id)
        else:
            memory_rows = self._select(
                memory,
                memory.c.step_id.in_(kept) | memory.c.step_id.is_(None),
                order=memory.c.id,
            )
        attempts = self._select(step_attempts, step_attempts.c.step_id.in_(kept))
        wait_rows = self._select(waits, waits.c.step_id.in_(kept), waits.c.state != "open")
        self._insert(
            step_attempts,
            [
                {**dict(a._mapping), "step_id": rename(a.step_id), "run_id": self.fork_id}
                for a in attempts
            ],
        )
        new_waits = {w.id: _ids.wait_id(rename(w.step_id), w.name) for w in wait_rows}
        self._insert(
            waits,
            [
                {
                    **dict(w._mapping),
                    "id": new_waits[w.id],
                    "run_id": self.fork_id,
                    "step_id": rename(w.step_id),
                }
                for w in wait_rows
            ],
        )
        signals = []
        for event in self.history.events.values():
            if event.type == "baton.signal" and event.cause_step_id in self.kept:
                wait_id = _ids.wait_id(rename(event.cause_step_id), event.data.get("name", ""))
                signals.append(
                    {
                        **dict(event._mapping),
                        "id": _ids.derive_id("signal", wait_id),
                        "run_id": self.fork_id,
                        "cause_step_id": rename(event.cause_step_id),
                    }
                )
        self._insert(events, signals)
        self._insert(
            memory,
            [
                {
                    "run_id": self.fork_id,
                    "key": m.key,
                    "value": m.value,
                    "step_id": rename(m.step_id) if m.step_id else None,
                    "created_at": m.created_at,
                }
                for m in memory_rows
            ],
        )

    def _find_loops(self) -> None:
        """The agent loops a kept step opened get a fork id (their events mention it)."""
        first_messages = self._select(conversation, conversation.c.seq == 0)
        for message in first_messages:
            if message.step_id in self.kept:
                self.loops[message.loop_id] = _ids.local_id(
                    self.fork_id, "fork", self.fork_id, message.loop_id
                )

    def copy_agents(self) -> dict[str, Any]:
        """Loops, conversation rows and model/tool calls of kept steps; returns run totals."""
        kept = list(self.kept)
        ids = self.ids()
        loop_rows = self._select(agent_loops, agent_loops.c.id.in_(list(self.loops)))
        messages = self._select(conversation, conversation.c.loop_id.in_(list(self.loops)))
        calls = self._select(model_calls, model_calls.c.step_id.in_(kept))
        tools = self._select(tool_calls, tool_calls.c.step_id.in_(kept))
        last_message: dict[str, Any] = {}
        for message in messages:
            if message.seq >= getattr(last_message.get(message.loop_id), "seq", -1):
                last_message[message.loop_id] = message
        per_loop: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"model_calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        )
        totals = {
            "model_calls": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "cost_usd": 0.0,
        }
        for call in calls:
            for key in totals:
                totals[key] += 1 if key == "model_calls" else getattr(call, key)
            for key in per_loop[call.loop_id]:
                per_loop[call.loop_id][key] += 1 if key == "model_calls" else getattr(call, key)
        loops = []
        for loop in loop_rows:
            # Finished only if the step that answered last is kept; otherwise it runs again.
            last = last_message.get(loop.id)
            finished = loop.status == "finished" and last is not None and last.step_id in kept
            loops.append(
                {
                    **dict(loop._mapping),
                    "id": self.loops[loop.id],
                    "run_id": self.fork_id,
                    "parent_loop_id": ids.get(loop.parent_loop_id, loop.parent_loop_id),
                    "status": loop.status if finished else "running",
                    "output": loop.output if finished else None,
                    "finished_at": loop.finished_at if finished else None,
                    **per_loop[loop.id],
                }
            )
        self._insert(agent_loops, loops)
        self._insert(
            conversation,
            [
                {
                    **{k: v for k, v in dict(m._mapping).items() if k != "id"},
                    "loop_id": self.loops[m.loop_id],
                    "run_id": self.fork_id,
                    "step_id": self.rename(m.step_id) if m.step_id else None,
                }
                for m in messages
                if m.step_id in self.kept
            ],
        )
        for table, rows in ((model_calls, calls), (tool_calls, tools)):
            self._insert(
                table,
                [
                    {
                        **dict(r._mapping),
                        "step_id": self.rename(r.step_id),
                        "run_id": self.fork_id,
                        "loop_id": ids.get(r.loop_id, r.loop_id),
                    }
                    for r in rows
                ],
            )
        return totals

    def _select(self, table: Any, *where: Any, order: Any = None) -> list[Any]:
        query = select(table).where(table.c.run_id == self.history.run.id, *where)
        if order is not None:
            query = query.order_by(order)
        return list(self.connection.execute(query).all())

    def _insert(self, table: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.connection.execute(insert(table), rows)


def _renamed(value: Any, ids: Mapping[str, str]) -> Any:
    """``value`` with every string that is one of the parent's ids replaced by the fork's."""
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_renamed(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: _renamed(item, ids) for key, item in value.items()}
    return value
