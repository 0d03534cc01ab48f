"""Two runs side by side, step by step, and where a fork first parts from its parent.

Steps are aligned by causal position: the id each step would have had if its run's trigger
had one fixed id (event = H(cause step, position), step = H(event, actor)). A fork derives
its ids the same way from its own trigger, so its steps line up with its parent's; two
unrelated runs of the same trigger type line up as far as they took the same path. Ids inside
event data (agent loops, steps) are compared by position too, never by value.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from store._engine import Store
from store._errors import InvalidState
from store._history import History, Renamer
from store._model import RUN_FINISHED
from store._recorded import MODEL_CALL_ACTOR
from store._tables import conversation, model_calls, tool_calls

TOOL_CALL_ACTOR = "baton.agent.tool_call"
_ROOT = "root"
# Fields compared between two aligned steps, in the order a divergence is looked for.
FIELDS = ("input", "request", "choice", "result", "output", "state", "tokens", "cost", "latency")


@dataclass(frozen=True)
class RunDiff:
    a: dict[str, Any]
    b: dict[str, Any]
    # {key, actor, event_type, a, b, differences, changed}: ``changed`` names the input fields
    # and output events ("0.total") that differ, compared by position, not by id.
    rows: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "steps": self.rows}


class _Run:
    """One run's steps as an operator compares them, keyed by causal position."""

    def __init__(self, connection: Connection, run_id: str) -> None:
        history = self.history = History(connection, run_id)
        self.run = dict(history.run._mapping)
        position = Renamer(history, _ROOT)
        self.key: dict[str, str] = {}
        for event in history.events.values():
            if event.id == history.run.trigger_event_id or (
                event.cause_step_id is not None and event.position >= 0
            ):
                self.key[event.id] = position(event.id)
        for step_id in history.steps:
            self.key[step_id] = position(step_id)
        self.emitted: dict[str, list[Any]] = {}
        for event in sorted(history.events.values(), key=lambda e: e.position):
            if event.cause_step_id is not None and event.position >= 0:
                self.emitted.setdefault(event.cause_step_id, []).append(event)
        self.model = {
            row.step_id: row
            for row in connection.execute(select(model_calls).where(model_calls.c.run_id == run_id))
        }
        self.tools = {
            row.step_id: row
            for row in connection.execute(select(tool_calls).where(tool_calls.c.run_id == run_id))
        }
        # An agent loop is known by the step that opened it, its agent and the call it serves.
        for first in connection.execute(
            select(conversation.c.loop_id, conversation.c.step_id).where(
                conversation.c.run_id == run_id, conversation.c.seq == 0
            )
        ):
            self.key[first.loop_id] = f"loop:{self.key.get(first.step_id, first.step_id)}"
        self.by_key = {self.key[step_id]: step_id for step_id in history.steps}

    def order(self) -> list[str]:
        """Step keys in the order the steps were created (causes before effects)."""
        ordered = sorted(
            self.history.steps.values(),
            key=lambda s: (s.created_at, s.started_at or float("inf"), s.id),
        )
        return [self.key[s.id] for s in ordered]

    def normal(self, value: Any) -> Any:
        """``value`` with this run's ids replaced by their causal positions."""
        if isinstance(value, str):
            return self.key.get(value, value)
        if isinstance(value, list):
            return [self.normal(item) for item in value]
        if isinstance(value, dict):
            return {key: self.normal(item) for key, item in value.items()}
        return value

    def view(self, step_id: str) -> dict[str, Any]:
        """What a person compares: input, output, the tool chosen, tokens, cost, latency."""
        step = self.history.steps[step_id]
        # A join's arrivals in causal-position order: the same order in both runs.
        inputs = sorted(
            (self.history.events[e] for e in self.history.inputs(step_id)),
            key=lambda event: self.key.get(event.id, event.id),
        )
        view: dict[str, Any] = {
            "step_id": step_id,
            "actor": step.actor,
            "event_type": inputs[0].type if inputs else None,
            "state": step.state,
            "attempts": step.attempts,
            "error": f"{step.error_type}: {step.error_message}" if step.error_type else None,
            "input": [e.data for e in inputs] if self.history.is_join(step_id) else inputs[0].data,
            "output": [{"type": e.type, "data": e.data} for e in self.emitted.get(step_id, [])],
            "choice": None,
            "result": None,
            "request_hash": None,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": 0.0,
            "latency_ms": _duration_ms(step.started_at, step.finished_at),
        }
        call = self.model.get(step_id)
        if call is not None:
            message = _message(call.response)
            view.update(
                choice=_tool_choice(message),
                result=message.get("content"),
                request_hash=call.request_hash,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                cost_usd=call.cost_usd,
                latency_ms=call.latency_ms,
            )
        tool = self.tools.get(step_id)
        if tool is not None:
            view.update(choice={"tool": tool.tool, "arguments": tool.arguments}, result=tool.result)
        return view


def diff_runs(store: Store, run_a: str, run_b: str) -> RunDiff:
    """Align two runs step by step and name, for each pair, the fields that differ."""
    with store.read() as connection:
        a, b = _Run(connection, run_a), _Run(connection, run_b)
    rows = []
    for key in _merged_order(a.order(), b.order()):
        in_a, in_b = a.by_key.get(key), b.by_key.get(key)
        view_a = a.view(in_a) if in_a else None
        view_b = b.view(in_b) if in_b else None
        first = view_a or view_b
        assert first is not None
        rows.append(
            {
                "key": key,
                "actor": first["actor"],
                "event_type": first["event_type"],
                "a": view_a,
                "b": view_b,
                "differences": _differences(a, view_a, b, view_b),
                "changed": _changed(a, view_a, b, view_b),
            }
        )
    return RunDiff(a=_summary(a), b=_summary(b), rows=rows)


def divergence(store: Store, fork_run_id: str) -> dict[str, Any] | None:
    """The first step where a fork parts from its parent, or None if it has not (yet).

    Looked for among the steps the fork re-executed, in the order they ran: a step the
    parent did not have, a different input, model request, tool call, answer or output, or
    a different end. If all agree and the fork has finished, a parent step the fork never
    reached is the divergence.
    """
    with store.read() as connection:
        fork = _Run(connection, fork_run_id)
        parent_id = fork.run["parent_run_id"]
        from_step = fork.run["forked_from_step_id"]
        if parent_id is None or from_step is None:
            raise InvalidState(f"run {fork_run_id} is not a fork; compare runs with `runs diff`")
        parent = _Run(connection, parent_id)
        requests = {
            row.step_id: row.request
            for row in connection.execute(
                select(model_calls.c.step_id, model_calls.c.request).where(
                    model_calls.c.run_id.in_([fork_run_id, parent_id])
                )
            )
        }
    start_key = parent.key[from_step]
    fork_start = fork.by_key.get(start_key)
    kept = fork.history.ancestors(fork_start) if fork_start else set()
    rerun = sorted(
        (s for s in fork.history.steps.values() if s.id not in kept),
        key=lambda s: (s.started_at or float("inf"), s.created_at, s.id),
    )
    for step in rerun:
        key = fork.key[step.id]
        original = parent.by_key.get(key)
        found = _first_difference(parent, original, fork, step.id, requests)
        if found is not None:
            what, detail = found
            return {
                "fork_step_id": step.id,
                "original_step_id": original,
                "actor": step.actor,
                "event_type": fork.view(step.id)["event_type"],
                "what": what,
                "detail": detail,
            }
    if fork.run["status"] not in RUN_FINISHED:
        return None
    parent_kept = parent.history.ancestors(from_step)
    for key in parent.order():
        original = parent.by_key[key]
        if original not in parent_kept and key not in fork.by_key:
            step = parent.history.steps[original]
            return {
                "fork_step_id": None,
                "original_step_id": original,
                "actor": step.actor,
                "event_type": parent.view(original)["event_type"],
                "what": "not_reached",
                "detail": f"the fork finished {fork.run['status']} without this step",
            }
    return None


def _first_difference(
    parent: _Run,
    original: str | None,
    fork: _Run,
    step_id: str,
    requests: dict[str, Any],
) -> tuple[str, str] | None:
    if original is None:
        return "new_step", "the parent has no step at this position"
    a, b = parent.view(original), fork.view(step_id)
    if parent.normal(a["input"]) != fork.normal(b["input"]):
        return "input", f"input changed: {_changed_fields(a['input'], b['input'])}"
    if b["actor"] == MODEL_CALL_ACTOR or a["request_hash"] or b["request_hash"]:
        if a["request_hash"] != b["request_hash"]:
            return "model_request", _request_change(requests.get(original), requests.get(step_id))
        if a["choice"] != b["choice"] or a["result"] != b["result"]:
            return "model_answer", "same request, different answer"
    if b["actor"] == TOOL_CALL_ACTOR or a["choice"] or b["choice"]:
        if a["choice"] != b["choice"]:
            return "tool_call", "a different tool or arguments"
        if a["result"] != b["result"]:
            return "tool_result", "same call, different result"
    if parent.normal(a["output"]) != fork.normal(b["output"]):
        return "output", "the step emitted different events"
    if a["state"] != b["state"] and b["state"] in ("succeeded", "failed", "canceled"):
        return "state", f"{a['state']} in the parent, {b['state']} in the fork"
    return None


def _request_change(before: Any, after: Any) -> str:
    """Where two model requests differ, in a few words: the first message, or the field."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return "model request changed (the parent has no recorded request here)"
    old, new = before.get("messages") or [], after.get("messages") or []
    for index, (x, y) in enumerate(zip(old, new, strict=False)):
        if x != y:
            return f"model request changed: messages[{index}] ({y.get('role')}) differs"
    if len(old) != len(new):
        return f"model request changed: {len(old)} messages before, {len(new)} now"
    fields = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return f"model request changed: {', '.join(fields) or 'content'}"


def _changed_fields(before: Any, after: Any) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        fields = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return ", ".join(fields)
    return "the events differ"


def _differences(
    a: _Run, view_a: dict[str, Any] | None, b: _Run, view_b: dict[str, Any] | None
) -> list[str]:
    if view_a is None or view_b is None:
        return ["missing"]
    found = []
    if a.normal(view_a["input"]) != b.normal(view_b["input"]):
        found.append("input")
    if view_a["request_hash"] != view_b["request_hash"]:
        found.append("request")
    if view_a["choice"] != view_b["choice"]:
        found.append("choice")
    if view_a["result"] != view_b["result"]:
        found.append("result")
    if a.normal(view_a["output"]) != b.normal(view_b["output"]):
        found.append("output")
    if view_a["state"] != view_b["state"]:
        found.append("state")
    tokens = ("input_tokens", "output_tokens")
    if any(view_a[t] != view_b[t] for t in tokens):
        found.append("tokens")
    if abs(view_a["cost_usd"] - view_b["cost_usd"]) > 1e-9:
        found.append("cost")
    if _latency_changed(view_a["latency_ms"], view_b["latency_ms"]):
        found.append("latency")
    return found


def _changed(
    a: _Run, view_a: dict[str, Any] | None, b: _Run, view_b: dict[str, Any] | None
) -> dict[str, list[str]]:
    """Which input fields and which output events' fields differ between two aligned steps."""
    if view_a is None or view_b is None:
        return {}
    changed = {
        "input": _changed_keys(a.normal(view_a["input"]), b.normal(view_b["input"])),
        "output": [],
    }
    out_a, out_b = a.normal(view_a["output"]), b.normal(view_b["output"])
    for index in range(max(len(out_a), len(out_b))):
        event_a = out_a[index] if index < len(out_a) else {}
        event_b = out_b[index] if index < len(out_b) else {}
        if event_a.get("type") != event_b.get("type"):
            changed["output"].append(f"{index}")
            continue
        keys = _changed_keys(event_a.get("data"), event_b.get("data"))
        changed["output"] += [f"{index}.{key}" for key in keys]
    return {field: keys for field, keys in changed.items() if keys}


def _changed_keys(a: Any, b: Any) -> list[str]:
    if a == b:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [str(k) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            f"{i}.{key}"
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for key in _changed_keys(x, y)
        ]
    return ["*"]


def _latency_changed(a: float | None, b: float | None) -> bool:
    """Only a change a person would act on: twice as slow (or fast) and 100 ms apart."""
    if a is None or b is None:
        return False
    return abs(a - b) > 100 and max(a, b) > 2 * min(a, b)


def _summary(run: _Run) -> dict[str, Any]:
    row = run.run
    return {
        "id": row["id"],
        "status": row["status"],
        "trigger_type": row["trigger_type"],
        "parent_run_id": row["parent_run_id"],
        "steps": len(run.history.steps),
        "model_calls": row["model_calls"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cost_usd": row["cost_usd"],
        "duration_ms": _duration_ms(row["created_at"], row["finished_at"]),
    }


def _merged_order(a: list[str], b: list[str]) -> list[str]:
    """A's order, with each step only B has placed after the step before it in B."""
    merged = list(a)
    index = {key: i for i, key in enumerate(merged)}
    previous: str | None = None
    for key in b:
        if key not in index:
            at = index[previous] + 1 if previous is not None else 0
            merged.insert(at, key)
            index = {k: i for i, k in enumerate(merged)}
        previous = key
    return merged


def _message(response: Any) -> dict[str, Any]:
    try:
        return dict(response["choices"][0]["message"])
    except (KeyError, IndexError, TypeError):
        return {}


def _tool_choice(message: dict[str, Any]) -> Any:
    """The tools a model response chose, with their arguments, or "answer"."""
    calls = message.get("tool_calls") or []
    if not calls:
        return "answer"
    chosen = []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        chosen.append({"tool": function.get("name"), "arguments": arguments})
    return chosen


def _duration_ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) * 1000
