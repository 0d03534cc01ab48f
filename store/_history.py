"""A run's causal structure, read once for an operator: which events a step handled, which
step caused each event, and the ids a run's rows would have had from another trigger id (a
fork's ids, or a step's causal position when two runs are compared)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, select

from store import _ids
from store._engine import Store
from store._errors import NotFound
from store._tables import events, join_arrivals, runs, steps


class History:
    """A run's events and steps with the links between them, loaded once (operator path)."""

    def __init__(self, connection: Connection, run_id: str) -> None:
        run = connection.execute(select(runs).where(runs.c.id == run_id)).first()
        if run is None:
            raise NotFound(f"no run {run_id!r}; list runs with `baton runs list`")
        self.run = run
        self.events = {
            row.id: row
            for row in connection.execute(select(events).where(events.c.run_id == run_id))
        }
        self.steps = {
            row.id: row for row in connection.execute(select(steps).where(steps.c.run_id == run_id))
        }
        join_ids = [s.id for s in self.steps.values() if s.join_expected is not None]
        self.arrivals: dict[str, list[Any]] = defaultdict(list)
        if join_ids:
            for row in connection.execute(
                select(join_arrivals)
                .where(join_arrivals.c.step_id.in_(join_ids))
                .order_by(join_arrivals.c.step_id)
            ):
                self.arrivals[row.step_id].append(row)
        self.plain_steps_of: dict[str, list[Any]] = defaultdict(list)
        self.joins_of: dict[str, list[str]] = defaultdict(list)
        for step in sorted(self.steps.values(), key=lambda s: (s.created_at, s.id)):
            if step.join_expected is None:
                self.plain_steps_of[step.event_id].append(step)
        for join_id, arrived in self.arrivals.items():
            for arrival in arrived:
                self.joins_of[arrival.event_id].append(join_id)

    def is_join(self, step_id: str) -> bool:
        return self.steps[step_id].join_expected is not None

    def inputs(self, step_id: str) -> list[str]:
        """The events a step handles: its event, or for a join every arrival."""
        if self.is_join(step_id):
            return [a.event_id for a in self.arrivals[step_id]]
        return [self.steps[step_id].event_id]

    def ancestors(self, step_id: str) -> set[str]:
        """Every step that caused this one, directly or not."""
        found: set[str] = set()
        frontier = [step_id]
        while frontier:
            for event_id in self.inputs(frontier.pop()):
                cause = self.events[event_id].cause_step_id
                if cause is not None and cause not in found:
                    found.add(cause)
                    frontier.append(cause)
        return found

    def group_of(self, join_id: str) -> str:
        """The fan-out group a join collects: a step id, or an event id for a group of one."""
        first = self.events[self.arrivals[join_id][0].event_id]
        return str(first.groups[-1][0]) if first.groups else str(first.id)


class Renamer:
    """The id of each of a run's events and steps had its trigger been ``trigger_id``:
    a fork's ids for its parent's rows, or (with a fixed root) a step's causal position."""

    def __init__(self, history: History, trigger_id: str) -> None:
        self.history = history
        self.new: dict[str, str] = {history.run.trigger_event_id: trigger_id}

    def __call__(self, old_id: str) -> str:
        # Iterative: a chain of a thousand steps must not exhaust Python's recursion limit.
        pending = [old_id]
        while pending:
            current = pending[-1]
            if current in self.new:
                pending.pop()
                continue
            needed = self._dependency(current)
            if needed not in self.new:
                pending.append(needed)
                continue
            self.new[current] = self._derive(current)
            pending.pop()
        return self.new[old_id]

    def _dependency(self, old_id: str) -> str:
        history = self.history
        if old_id in history.events:
            cause = history.events[old_id].cause_step_id
            assert cause is not None, "only the trigger has no cause, and it is named up front"
            return str(cause)
        if history.is_join(old_id):
            return history.group_of(old_id)
        return str(history.steps[old_id].event_id)

    def _derive(self, old_id: str) -> str:
        history = self.history
        if old_id in history.events:
            event = history.events[old_id]
            return _ids.event_id(self.new[event.cause_step_id], event.position)
        step = history.steps[old_id]
        if step.join_expected is not None:
            return _ids.join_step_id(self.new[history.group_of(old_id)], step.actor)
        return _ids.step_id(self.new[step.event_id], step.actor)


def resolve_step_id(store: Store, run_id: str, step_id_or_part: str) -> str:
    """A step of ``run_id`` from its id, or the unique step whose id begins or ends with
    ``step_id_or_part`` (at least 6 characters; listings show the last 12)."""
    with store.read() as connection:
        found = (
            connection.execute(
                select(steps.c.id).where(
                    steps.c.run_id == run_id, _ids.matching(steps.c.id, step_id_or_part)
                )
            )
            .scalars()
            .all()
        )
    if step_id_or_part in found:
        return step_id_or_part
    if len(found) == 1:
        return str(found[0])
    if len(found) > 1:
        raise NotFound(
            f"{step_id_or_part!r} matches {len(found)} steps of run {run_id}; give more "
            "characters, or the whole id from `baton runs show --json`"
        )
    raise NotFound(
        f"run {run_id} has no step {step_id_or_part!r}; see its steps with "
        f"`baton runs show {run_id}`"
    )


def step_input(store: Store, step_id: str) -> tuple[str, str, dict[str, Any]]:
    """A step's actor and the type and data of the event it handles (a join's first)."""
    with store.read() as connection:
        row = connection.execute(
            select(steps.c.actor, events.c.type, events.c.data)
            .join(events, events.c.id == steps.c.event_id)
            .where(steps.c.id == step_id)
        ).first()
    if row is None:
        raise NotFound(f"no step {step_id!r}")
    return str(row.actor), str(row.type), dict(row.data)
