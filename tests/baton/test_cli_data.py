"""`baton dlq`, `baton label`, `baton export` and `baton stats` through the real CLI, on a
real Valkey and store, with agents answered by the offline model over real HTTP."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from sqlalchemy import func, select

from events import Event
from store import (
    DeadLetterFilter,
    NewEvent,
    Store,
    confirm_published,
    create_run,
    dead_letter_groups,
    record_dead_letter,
    run_detail,
)
from store._tables import model_calls, runs
from tests.conftest import baton, wait_for_run, wait_until
from workers import Agent, Context, Runtime, Worker, actor, tool
from workers.agents.offline_model import (
    Cassette,
    OfflineModelConfig,
    OfflineModelHandle,
    start_in_thread,
)

# -- the actors and agents of these stories ---------------------------------------------------


class DataFailing(Event, type="t_data.failing"):
    n: int


class DataFlaky(Event, type="t_data.flaky"):
    n: int


class DataLate(Event, type="t_data.late"):
    n: int


class DataAsk(Event, type="t_data.ask"):
    topic: str


class DataDoomed(Event, type="t_data.doomed"):
    topic: str


@actor(on=DataFailing, retries=0)
def t_data_failing(event: DataFailing, ctx: Context) -> None:
    raise RuntimeError(f"t_data: the payment API is down (n={event.n})")


payment_api_up = threading.Event()


@actor(on=DataFlaky, retries=0)
def t_data_flaky(event: DataFlaky, ctx: Context) -> None:
    if not payment_api_up.is_set():
        raise ConnectionError("t_data: the payment API refused the connection")


late_ran = threading.Event()


@actor(on=DataLate, retries=0)
def t_data_late(event: DataLate, ctx: Context) -> None:
    late_ran.set()


@tool(idempotent=True)
def t_data_lookup(topic: str) -> str:
    """Look a topic up in the team's notes."""
    return f"notes on {topic}: ask alice@example.com; API key sk-t-data-0123456789abcdefXYZ"


@tool(idempotent=True)
def t_data_owner(topic: str) -> str:
    """Find who owns a topic."""
    return f"{topic} is owned by the platform team (token ghp_tdata0123456789abcdefghij)"


t_data_helper = Agent(
    name="t_data_helper",
    model="gpt-4.1-mini",
    instructions="You answer questions about the team's notes. Use the tools, then answer.",
    tools=[t_data_lookup, t_data_owner],
    max_steps=4,
)
t_data_doomed = Agent(
    name="t_data_doomed",
    model="gpt-4.1-mini",
    instructions="You look things up, but you may only ask the model once.",
    tools=[t_data_lookup],
    max_steps=1,
)


@actor(on=DataAsk, retries=0)
def t_data_ask(event: DataAsk, ctx: Context) -> Event:
    return t_data_helper.start(ctx, f"What do the notes say about {event.topic}? I am bob@ex.org")


@actor(on=DataDoomed, retries=0)
def t_data_doom(event: DataDoomed, ctx: Context) -> Event:
    return t_data_doomed.start(ctx, f"Look up {event.topic}.")


def t_data_redact(message: dict[str, Any]) -> dict[str, Any]:
    """The operator's own redactor (--redact tests.baton.test_cli_data:t_data_redact)."""
    if isinstance(message.get("content"), str):
        message = {**message, "content": message["content"].replace("billing", "[topic]")}
    return message


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def offline_model() -> Iterator[Callable[..., OfflineModelHandle]]:
    """Factory: an offline model server (default mode unless a cassette is given)."""
    handles: list[OfflineModelHandle] = []

    def start(**config: Any) -> OfflineModelHandle:
        handle = start_in_thread(OfflineModelConfig(**config))
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


def model_settings(model: OfflineModelHandle) -> dict[str, Any]:
    return {"model_base_url": model.base_url, "model_api_key": "offline"}


def ok(result: Any) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def json_of(result: Any) -> Any:
    return json.loads(ok(result).stdout)


TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def validate_chat_example(example: dict[str, Any]) -> None:
    """One line of a chat fine-tuning file, as OpenAI documents it (FineTuneChatRequestInput):
    messages of the roles system, user, assistant and tool; an assistant's tool calls as
    {id, type: function, function: {name, arguments: JSON string}}, each answered by a tool
    message after it and before the next turn; tools as function schemas."""
    assert set(example) <= {"messages", "tools", "parallel_tool_calls"}, set(example)
    tools = example.get("tools", [])
    assert isinstance(tools, list)
    names = set()
    for item in tools:
        assert set(item) == {"type", "function"} and item["type"] == "function"
        function = item["function"]
        assert set(function) <= {"name", "description", "parameters", "strict"}
        assert TOOL_NAME.match(function["name"]) and function["name"] not in names
        names.add(function["name"])
        assert isinstance(function.get("description", ""), str)
        assert function.get("parameters", {"type": "object"})["type"] == "object"
    if "parallel_tool_calls" in example:
        assert isinstance(example["parallel_tool_calls"], bool) and tools
    messages = example["messages"]
    assert isinstance(messages, list) and messages
    assert messages[0]["role"] in ("system", "user")
    assert messages[-1]["role"] == "assistant", "an example ends with what the model said"
    unanswered: list[str] = []
    for message in messages:
        role = message["role"]
        if role != "tool":
            assert not unanswered, f"tool calls {unanswered} are not answered before {role}"
        if role in ("system", "user"):
            assert set(message) <= {"role", "content", "name"}
            assert isinstance(message["content"], str) and message["content"]
        elif role == "assistant":
            assert set(message) <= {"role", "content", "name", "tool_calls", "weight", "refusal"}
            calls = message.get("tool_calls")
            assert calls or isinstance(message.get("content"), str)
            assert message.get("weight", 1) in (0, 1)
            for call in calls or []:
                assert set(call) == {"id", "type", "function"} and call["type"] == "function"
                assert isinstance(call["id"], str) and call["id"]
                assert set(call["function"]) == {"name", "arguments"}
                assert call["function"]["name"] in names
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                unanswered.append(call["id"])
            if example.get("parallel_tool_calls") is False:
                assert len(calls or []) <= 1
        elif role == "tool":
            assert set(message) == {"role", "tool_call_id", "content"}
            assert isinstance(message["content"], str)
            assert message["tool_call_id"] in unanswered, "a tool message follows its call"
            unanswered.remove(message["tool_call_id"])
        else:
            pytest.fail(f"role {role!r} is not in the chat fine-tuning format")


# -- dead letters ----------------------------------------------------------------------------


def test_dlq_lists_a_failing_actors_runs_and_an_undecodable_message_then_discards_them(
    store: Store, start_worker: Callable[..., Worker], baton_env: dict[str, str]
) -> None:
    # Given two runs whose step failed for good, and undecodable bytes on the queue
    worker = start_worker()
    failed = [worker.runtime.start_run(DataFailing(n=n)).run_id for n in (1, 2)]
    for run_id in failed:
        assert wait_for_run(store, run_id) == "failed"
    worker.runtime.broker.do_enqueue("default", "t-data-garbage", b"\xff\xfe not a message")
    wait_until(
        lambda: len(dead_letter_groups(store, DeadLetterFilter())) == 2, 15, "two dead letters"
    )
    # When the dead letters are listed
    groups = json_of(baton(baton_env, "dlq", "list", "--json"))
    # Then the failing actor's runs are one group, and the message another
    step_group = next(g for g in groups if g["kind"] == "step")
    assert step_group["actor"].endswith("t_data_failing")
    assert (step_group["error_type"], step_group["count"], step_group["runs"]) == (
        "RuntimeError",
        2,
        2,
    )
    assert "the payment API is down" in step_group["last_error"]
    message_group = next(g for g in groups if g["kind"] == "message")
    assert (message_group["error_type"], message_group["count"]) == ("UndecodableMessage", 1)
    assert message_group["first_seen"] <= message_group["last_seen"]
    # And the table says the same to a person, and the filters narrow it
    table = ok(baton(baton_env, "dlq", "list")).stdout
    assert "RuntimeError" in table and "UndecodableMessage" in table
    narrowed = json_of(baton(baton_env, "dlq", "list", "--error", "undecodable", "--json"))
    assert [g["group"] for g in narrowed] == [message_group["group"]]
    # And show gives the last attempt's traceback, and the message's raw bytes
    shown = json_of(baton(baton_env, "dlq", "show", step_group["group"], "--json"))
    assert shown["count"] == 2 and {i["run_id"] for i in shown["items"]} == set(failed)
    assert (
        "RuntimeError: t_data: the payment API is down"
        in (shown["newest"]["last_attempt"]["traceback"])
    )
    [garbage] = json_of(baton(baton_env, "dlq", "show", message_group["group"], "--json"))["items"]
    raw = ok(baton(baton_env, "dlq", "show", garbage["id"])).stdout
    assert "\\xff\\xfe not a message" in raw
    # And replaying the undecodable message says that nothing can be replayed
    refused = baton(baton_env, "dlq", "replay", garbage["id"], "--reason", "try", "-y")
    assert refused.returncode == 1
    assert "nothing here can be replayed" in refused.stderr
    assert "not a JSON message" in refused.stderr
    # And acting without -y on a pipe, or without a selection, is a usage error
    unconfirmed = baton(baton_env, "dlq", "discard", "--all", "--reason", "outage")
    assert unconfirmed.returncode == 2 and "-y" in unconfirmed.stderr
    assert baton(baton_env, "dlq", "discard", "--reason", "outage", "-y").returncode == 2
    # When both groups are discarded
    discarded = baton(
        baton_env,
        "dlq",
        "discard",
        step_group["group"],
        garbage["id"],
        "--reason",
        "known outage",
        "-y",
    )
    assert "discarded 3 item(s)" in ok(discarded).stderr
    # Then the list is empty, and the runs are still there to inspect
    assert json_of(baton(baton_env, "dlq", "list", "--json")) == []
    assert run_detail(store, failed[0])["run"]["status"] == "failed"


def test_dlq_replay_reruns_failed_steps_and_republishes_a_dead_lettered_pointer(
    store: Store, start_worker: Callable[..., Worker], baton_env: dict[str, str]
) -> None:
    # Given a worker without maintenance, so only the replay can bring a lost message back
    worker = start_worker(maintenance=False)
    payment_api_up.clear()
    # And a run whose step failed because an API was down
    flaky = worker.runtime.start_run(DataFlaky(n=1)).run_id
    assert wait_for_run(store, flaky) == "failed"
    # And a run whose step's message was refused by a worker that did not have its actor yet
    created = create_run(store, NewEvent(DataLate.type, {"n": 1}), worker.runtime.route)
    [lost] = created.publish
    confirm_published(store, [lost.message_id])
    message = dramatiq.Message(
        queue_name=lost.queue,
        actor_name=lost.actor,
        args=(lost.step_id, lost.run_id, lost.traceparent),
        kwargs={},
        options={},
    )
    record_dead_letter(
        store,
        queue=lost.queue,
        raw=message.encode(),
        reason=f"nacked: no actor {lost.actor!r} in this worker, or it failed outside a step",
    )
    # When the replay is planned (dry run)
    plan = json_of(
        baton(baton_env, "dlq", "replay", "--all", "--reason", "fixed", "--dry-run", "--json")
    )
    # Then both would run again, and nothing has happened yet
    assert {item["kind"]: item["action"] for item in plan} == {
        "step": "replay",
        "message": "replay",
    }
    assert run_detail(store, flaky)["run"]["status"] == "failed"
    # When the API is back and both are replayed
    payment_api_up.set()
    result = ok(baton(baton_env, "dlq", "replay", "--all", "--reason", "API is back", "-y"))
    # Then the failed run succeeds, re-run in place, and the lost step runs at last
    assert "replayed 2 item(s)" in result.stderr
    assert wait_for_run(store, flaky) == "succeeded"
    assert wait_for_run(store, created.run_id) == "succeeded" and late_ran.is_set()
    [step] = [s for s in run_detail(store, flaky)["steps"] if s["actor"].endswith("t_data_flaky")]
    assert step["attempts"] == 2
    # And the list is empty
    assert json_of(baton(baton_env, "dlq", "list", "--json")) == []


# -- runs as data ----------------------------------------------------------------------------


def test_export_writes_labelled_conversations_in_the_chat_fine_tuning_format(
    store: Store,
    start_worker: Callable[..., Worker],
    offline_model: Callable[..., OfflineModelHandle],
    baton_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Given two agent runs answered by the offline model, one labelled good
    worker = start_worker(**model_settings(offline_model()))
    good, other = (worker.runtime.start_run(DataAsk(topic=t)).run_id for t in ("billing", "x"))
    assert wait_for_run(store, good) == wait_for_run(store, other) == "succeeded"
    ok(baton(baton_env, "label", good[:12], "good", "--note", "exactly right"))
    # When the good runs are exported in the chat format
    target = tmp_path / "train.jsonl"
    result = ok(
        baton(
            baton_env,
            "export",
            "--format",
            "openai-chat",
            "--agent",
            "t_data_helper",
            "--status",
            "succeeded",
            "--label",
            "good",
            "--output",
            str(target),
        )
    )
    # Then there is one line, a valid fine-tuning example of that run's conversation
    lines = target.read_text().splitlines()
    assert len(lines) == 1 and "exported 1 conversation(s)" in result.stderr
    example = json.loads(lines[0])
    validate_chat_example(example)
    roles = [m["role"] for m in example["messages"]]
    assert roles[:3] == ["system", "user", "assistant"] and roles[-1] == "assistant"
    assert roles.count("tool") == 2 and example["parallel_tool_calls"] is True
    # And the tools are the schemas the agent sent
    [request] = [
        r for (r,) in _model_call_requests(store, good) if r["messages"][-1]["role"] == "user"
    ]
    assert example["tools"] == request["tools"]
    assert {t["function"]["name"] for t in example["tools"]} == {"t_data_lookup", "t_data_owner"}
    # And e-mail addresses and tokens are masked everywhere, tool arguments included
    text = lines[0]
    for secret in ("alice@example.com", "bob@ex.org", "sk-t-data-0123", "ghp_tdata0123"):
        assert secret not in text
    assert "[REDACTED_EMAIL]" in text and "[REDACTED_TOKEN]" in text
    # When the operator's own redactor is added, and everything is exported to stdout
    hooked = ok(
        baton(
            baton_env,
            "export",
            "--format",
            "openai-chat",
            "--redact",
            "tests.baton.test_cli_data:t_data_redact",
        )
    )
    # Then both runs are there, valid, with the redactor applied after the built-in one
    examples = [json.loads(line) for line in hooked.stdout.splitlines()]
    assert len(examples) == 2
    for each in examples:
        validate_chat_example(each)
    contents = [m.get("content") or "" for each in examples for m in each["messages"]]
    assert not [c for c in contents if "billing" in c] and any("[topic]" in c for c in contents)
    # And a redactor that cannot be found is a usage error that names the fix
    missing = baton(baton_env, "export", "--format", "openai-chat", "--redact", "nowhere:scrub")
    assert missing.returncode == 2 and "cannot import redactor module 'nowhere'" in missing.stderr
    # And runs labelled bad: none
    bad = ok(baton(baton_env, "export", "--format", "openai-chat", "--label", "bad"))
    assert bad.stdout == "" and "exported 0 conversation(s)" in bad.stderr


def _model_call_requests(store: Store, run_id: str) -> list[Any]:
    with store.read() as connection:
        return list(
            connection.execute(
                select(model_calls.c.request).where(model_calls.c.run_id == run_id)
            ).all()
        )


def test_a_cassette_exported_from_a_run_replays_it_with_no_live_model_call(
    store: Store,
    make_runtime: Callable[..., Runtime],
    start_worker: Callable[..., Worker],
    offline_model: Callable[..., OfflineModelHandle],
    baton_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Given a production run answered by a live (default-mode) model
    live = offline_model()
    first = Worker(make_runtime(**model_settings(live)), threads=4)
    first.start()
    try:
        original = first.runtime.start_run(DataAsk(topic="invoices")).run_id
        assert wait_for_run(store, original) == "succeeded"
    finally:
        first.stop(timeout_ms=5_000)
    asked = live.stats().requests
    # When its model exchanges are exported as a cassette
    cassette_path = tmp_path / "invoices.cassette.json"
    result = ok(
        baton(baton_env, "export", "--format", "cassette", original, "-o", str(cassette_path))
    )
    cassette = Cassette.load(cassette_path)
    assert len(cassette.exchanges) == asked == 2
    assert f"recorded 2 model exchange(s) of run {original}" in result.stderr
    # And the same trigger runs again against an offline model replaying that cassette
    replaying = offline_model(cassette=cassette)
    worker = start_worker(**model_settings(replaying))
    again = worker.runtime.start_run(DataAsk(topic="invoices")).run_id
    # Then it succeeds with the same answer, every exchange replayed, the live model not asked
    assert wait_for_run(store, again) == "succeeded"
    assert replaying.stats().cassette_position == 2
    assert live.stats().requests == asked
    outputs = [run_detail(store, r)["agents"][0]["output"] for r in (original, again)]
    assert outputs[0] == outputs[1] and outputs[0]
    # And a cassette needs a run that asked a model
    none = baton(baton_env, "export", "--format", "cassette", "nope00")
    assert none.returncode == 1 and "no run" in none.stderr
    assert baton(baton_env, "export", "--format", "cassette").returncode == 2


def test_stats_figures_match_the_runs(
    store: Store,
    start_worker: Callable[..., Worker],
    offline_model: Callable[..., OfflineModelHandle],
    baton_env: dict[str, str],
) -> None:
    # Given three runs of one agent, two labelled good and one bad, and a failed run of another
    worker = start_worker(**model_settings(offline_model()))
    helped = [worker.runtime.start_run(DataAsk(topic=f"t{n}")).run_id for n in range(3)]
    doomed = worker.runtime.start_run(DataDoomed(topic="fate")).run_id
    assert [wait_for_run(store, r) for r in helped] == ["succeeded"] * 3
    assert wait_for_run(store, doomed) == "failed"
    for run_id, outcome in zip(helped, ("good", "good", "bad"), strict=True):
        ok(baton(baton_env, "label", run_id, outcome))
    ok(baton(baton_env, "label", helped[2], "bad", "--note", "relabelled: still bad"))
    # When the figures are asked for
    figures = {f["agent"]: f for f in json_of(baton(baton_env, "stats", "--json"))}
    # Then they are the runs' own totals
    with store.read() as connection:
        totals = connection.execute(
            select(
                func.sum(runs.c.input_tokens),
                func.sum(runs.c.output_tokens),
                func.sum(runs.c.cost_usd),
                func.sum(runs.c.model_calls),
            ).where(runs.c.id.in_(helped))
        ).one()
    helper = figures["t_data_helper"]
    assert (helper["runs"], helper["succeeded"], helper["failed"]) == (3, 3, 0)
    assert helper["success_rate"] == 1.0
    assert (helper["input_tokens"], helper["output_tokens"]) == (totals[0], totals[1])
    assert helper["model_calls"] == totals[3] == 6
    assert helper["cost_usd"] == pytest.approx(totals[2]) and helper["cost_usd"] > 0
    assert (helper["good"], helper["bad"]) == (2, 1)
    assert helper["cost_per_good_usd"] == pytest.approx(totals[2] / 2)
    dead = figures["t_data_doomed"]
    assert (dead["runs"], dead["failed"], dead["success_rate"], dead["cost_per_good_usd"]) == (
        1,
        1,
        0.0,
        None,
    )
    # And --agent narrows it; the table shows the same to a person
    only = json_of(baton(baton_env, "stats", "--agent", "t_data_doomed", "--json"))
    assert [f["agent"] for f in only] == ["t_data_doomed"]
    table = ok(baton(baton_env, "stats", "--since", "1h")).stdout
    assert "t_data_helper" in table and "100%" in table
    assert baton(baton_env, "label", helped[0], "meh").returncode == 2
