"""The offline model, exercised over real HTTP through the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from pydantic import BaseModel, Field

from workers.agents.offline_model import (
    Cassette,
    CassetteError,
    OfflineModelConfig,
    OfflineModelHandle,
    start_in_thread,
)

MakeModel = Callable[..., OfflineModelHandle]
MakeClient = Callable[..., OpenAI]

SEARCH_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "search_issues",
        "description": "Search the issue tracker.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "required": ["query"],
        },
    },
}
LABEL_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "add_label",
        "description": "Add a label to an issue.",
        "parameters": {
            "type": "object",
            "properties": {
                "repo": {"type": "string"},
                "number": {"type": "integer"},
                "label": {"type": "string", "enum": ["feature", "bug", "question"]},
            },
            "required": ["repo", "number", "label"],
            "additionalProperties": False,
        },
    },
}
TRIAGE_MESSAGES: Any = [
    {"role": "system", "content": "You triage GitHub issues. Labels: feature, bug, question."},
    {"role": "user", "content": "Triage repo: acme/widgets number: 12. The app crashes: a bug."},
]


class Severity(StrEnum):
    LOW = "low"
    HIGH = "high"


class Owner(BaseModel):
    team: str
    on_call: bool


class TriageResult(BaseModel):
    label: Literal["feature", "bug", "question"]
    severity: Severity
    keywords: Annotated[list[str], Field(min_length=2, max_length=3)]
    priority: Annotated[int, Field(ge=3, le=5)]
    summary: Annotated[str, Field(min_length=20)]
    owner: Owner | None
    related: list[Owner]


@pytest.fixture
def make_model() -> Iterator[MakeModel]:
    """Factory: `make_model(delay_seconds=1)` starts an offline model; all stop at teardown."""
    handles: list[OfflineModelHandle] = []

    def make(**config: Any) -> OfflineModelHandle:
        handle = start_in_thread(OfflineModelConfig(**config))
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """Factory: `make_client(model, max_retries=0)` is an `OpenAI` client for that model."""
    clients: list[OpenAI] = []

    def make(model: OfflineModelHandle, **options: Any) -> OpenAI:
        client = OpenAI(base_url=model.base_url, api_key="offline", **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def post_faults(model: OfflineModelHandle, faults: list[dict[str, Any]]) -> httpx.Response:
    root = model.base_url.removesuffix("/v1")
    return httpx.post(f"{root}/_offline/faults", json=faults)


# Default mode


def test_calls_every_tool_then_answers_with_the_tool_results(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given an offline model and an agent offering two tools
    client = make_client(make_model())
    messages: Any = list(TRIAGE_MESSAGES)

    # When the agent asks for the first time
    first = client.chat.completions.create(
        model="gpt-4.1-mini", messages=messages, tools=[SEARCH_TOOL, LABEL_TOOL]
    )

    # Then the model calls both tools at once, with arguments taken from the conversation
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = function_calls(choice.message)
    assert [call.function.name for call in calls] == ["search_issues", "add_label"]
    search, label = (json.loads(call.function.arguments) for call in calls)
    assert search["query"].startswith("Triage repo: acme/widgets")
    assert 1 <= search["limit"] <= 20
    assert label == {"repo": "acme/widgets", "number": 12, "label": "bug"}
    assert first.model == "gpt-4.1-mini"

    # When the agent runs the tools and sends their results back
    messages.append(choice.message.model_dump(exclude_none=True))
    for call, result in zip(calls, ["3 similar issues found", "label added"], strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = client.chat.completions.create(
        model="gpt-4.1-mini", messages=messages, tools=[SEARCH_TOOL, LABEL_TOOL]
    )

    # Then it stops calling tools and answers with a summary of what they returned
    assert second.choices[0].finish_reason == "stop"
    answer = second.choices[0].message.content or ""
    assert "3 similar issues found" in answer
    assert "label added" in answer
    # And usage counts words, with the earlier turn's prompt reported as cached
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
    assert second.usage.completion_tokens_details is not None
    assert second.usage.completion_tokens_details.reasoning_tokens == 0
    assert second.usage.total_tokens == (
        second.usage.prompt_tokens + second.usage.completion_tokens
    )


def test_parallel_tool_calls_false_calls_one_tool_at_a_time(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given an agent that forbids parallel tool calls
    client = make_client(make_model())
    messages: Any = list(TRIAGE_MESSAGES)

    # When it loops until the model stops calling tools
    called: list[list[str]] = []
    for _ in range(4):
        response = client.chat.completions.create(
            model="m", messages=messages, tools=[SEARCH_TOOL, LABEL_TOOL], parallel_tool_calls=False
        )
        message = response.choices[0].message
        if not message.tool_calls:
            break
        called.append([call.function.name for call in function_calls(message)])
        messages.append(message.model_dump(exclude_none=True))
        messages += [
            {"role": "tool", "tool_call_id": call.id, "content": "ok"}
            for call in message.tool_calls
        ]

    # Then each tool was called once, one per response, and the loop ended with an answer
    assert called == [["search_issues"], ["add_label"]]
    assert response.choices[0].finish_reason == "stop"


def test_json_schema_answer_validates_against_the_pydantic_schema(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given a response format built from a pydantic model (enum, Literal, bounded list and int,
    # a nullable nested model and a list of them, all through $defs)
    client = make_client(make_model())
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "TriageResult", "schema": TriageResult.model_json_schema()},
    }

    # When the model answers with it
    response = client.chat.completions.create(
        model="m", messages=TRIAGE_MESSAGES, response_format=response_format
    )

    # Then the content validates, preferring the values the conversation names
    result = TriageResult.model_validate_json(response.choices[0].message.content or "")
    assert result.label == "bug"
    assert 2 <= len(result.keywords) <= 3
    assert 3 <= result.priority <= 5

    # And the openai client's own structured-output helper (strict schema) parses it too
    parsed = client.chat.completions.parse(
        model="m", messages=TRIAGE_MESSAGES, response_format=TriageResult
    )
    assert parsed.choices[0].message.parsed is not None
    assert parsed.choices[0].message.parsed.label == "bug"


def test_identical_requests_get_byte_identical_responses(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given one offline model and a request with tools
    client = make_client(make_model())
    request: dict[str, Any] = {
        "model": "m",
        "messages": TRIAGE_MESSAGES,
        "tools": [SEARCH_TOOL, LABEL_TOOL],
    }

    # When the same request is sent twice
    first = client.chat.completions.with_raw_response.create(**request)
    second = client.chat.completions.with_raw_response.create(**request)
    other = client.chat.completions.with_raw_response.create(**{**request, "model": "other"})

    # Then both answers are the same bytes, ids included; a different request gets other ids
    assert first.content == second.content
    assert first.parse().id.startswith("chatcmpl-")
    assert other.parse().id != first.parse().id


def test_malformed_requests_get_a_400_naming_the_field(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given an offline model
    client = make_client(make_model())
    bad_role: Any = [{"role": "robot", "content": "hi"}]

    # When a message has an unknown role, Then the error names that field
    with pytest.raises(openai.BadRequestError) as bad_request:
        client.chat.completions.create(model="m", messages=bad_role)
    assert bad_request.value.body is not None
    assert "messages[0].role" in str(bad_request.value)

    # When a tool call is left unanswered, Then the error says which one
    unanswered: Any = [
        *TRIAGE_MESSAGES,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "x", "arguments": "{}"}}
            ],
        },
    ]
    with pytest.raises(openai.BadRequestError, match="call_1"):
        client.chat.completions.create(model="m", messages=unanswered)

    # When streaming is asked for, Then it is refused with a clear reason
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES, stream=True)


def test_lists_models(make_model: MakeModel, make_client: MakeClient) -> None:
    # Given an offline model configured with two model names
    client = make_client(make_model(models=("gpt-4.1-mini", "gpt-4.1")))

    # When a client lists models, Then it sees them
    assert [model.id for model in client.models.list()] == ["gpt-4.1-mini", "gpt-4.1"]


# Cassettes


def test_cassette_replays_recorded_exchanges_in_order(
    make_model: MakeModel, make_client: MakeClient, tmp_path: Path
) -> None:
    # Given a cassette recorded from a two-turn conversation and saved to a file
    live = make_client(make_model())
    cassette = Cassette()
    messages: Any = list(TRIAGE_MESSAGES)
    first_request: Any = {"model": "m", "messages": list(messages), "tools": [LABEL_TOOL]}
    first = live.chat.completions.create(**first_request)
    cassette.record(first_request, first)
    calls = first.choices[0].message.tool_calls or []
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "labelled"})
    second_request: Any = {"model": "m", "messages": list(messages), "tools": [LABEL_TOOL]}
    second = live.chat.completions.create(**second_request)
    cassette.record(second_request, second)
    cassette.save(tmp_path / "triage.json")

    # When a model replays the loaded cassette and the same requests arrive
    replaying = make_model(cassette=Cassette.load(tmp_path / "triage.json"))
    client = make_client(replaying)
    replayed = [
        client.chat.completions.create(**first_request),
        client.chat.completions.create(**second_request),
    ]

    # Then it answers with the recorded responses, in order
    assert [r.model_dump() for r in replayed] == [first.model_dump(), second.model_dump()]
    assert replaying.stats().cassette_position == 2

    # And one request too many fails loudly
    with pytest.raises(openai.BadRequestError, match="cassette exhausted"):
        client.chat.completions.create(**second_request)


def test_cassette_mismatch_fails_loudly_with_the_first_differing_field(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given a cassette recorded for one question
    cassette = Cassette()
    request = {"model": "m", "messages": TRIAGE_MESSAGES}
    cassette.record(request, {"id": "chatcmpl-1", "object": "chat.completion", "choices": []})
    client = make_client(make_model(cassette=cassette))

    # When the code under test asks something else
    changed = [TRIAGE_MESSAGES[0], {"role": "user", "content": "Something else entirely"}]
    with pytest.raises(openai.BadRequestError) as mismatch:
        client.chat.completions.create(model="m", messages=changed)

    # Then the error names the exchange, the field and both values
    error = mismatch.value
    assert isinstance(error.body, dict)
    assert error.body["type"] == "cassette_mismatch"
    assert error.body["param"] == "messages[1].content"
    assert "exchanges[0]" in error.message
    assert "'Something else entirely'" in error.message


def test_loading_a_broken_cassette_names_the_file(tmp_path: Path) -> None:
    # Given a cassette file whose exchange lacks a request
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"version": 1, "exchanges": [{"response": {"choices": []}}]}))

    # When it is loaded, Then the error names the file
    with pytest.raises(CassetteError, match=r"broken\.json"):
        Cassette.load(path)


# Faults and latency


def test_429_with_retry_after_is_retried_by_the_client(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given a model told (over HTTP) to rate-limit the next request for 1.5 s
    model = make_model()
    assert post_faults(model, [{"status": 429, "retry_after": 1.5}]).json() == {"faults_pending": 1}
    client = make_client(model, max_retries=2)

    # When the client asks
    started = time.monotonic()
    response = client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)

    # Then it waited as told, retried once and got the answer
    assert time.monotonic() - started >= 1.4
    assert response.choices[0].finish_reason == "stop"
    stats = model.stats()
    assert stats.requests == 2
    assert stats.by_status == {200: 1, 429: 1}


def test_500_and_permanent_400_faults(make_model: MakeModel, make_client: MakeClient) -> None:
    # Given a model with a server error and then a permanent error queued
    model = make_model()
    post_faults(model, [{"status": 500, "message": "boom"}, {"status": 400}])
    client = make_client(model, max_retries=0)

    # When the client asks twice, Then it sees each error as its OpenAI exception
    with pytest.raises(openai.InternalServerError, match="boom"):
        client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)
    with pytest.raises(openai.BadRequestError, match="fault injected"):
        client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)

    # And once the faults are used up, answers come back
    client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)
    assert model.stats().by_status == {200: 1, 400: 1, 500: 1}


def test_cleared_faults_and_reset_stats(make_model: MakeModel, make_client: MakeClient) -> None:
    # Given queued faults and some traffic
    model = make_model()
    client = make_client(model, max_retries=0)
    client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)
    post_faults(model, [{"status": 500}, {"status": 500}])
    root = model.base_url.removesuffix("/v1")

    # When the faults are deleted and the stats reset over HTTP
    assert httpx.delete(f"{root}/_offline/faults").json() == {"faults_pending": 0}
    reset = httpx.post(f"{root}/_offline/stats/reset").json()

    # Then requests succeed and counting starts again
    assert reset["requests"] == 0
    client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)
    assert httpx.get(f"{root}/_offline/stats").json()["by_status"] == {"200": 1}

    # And a malformed fault list is refused naming the field
    refused = post_faults(model, [{"status": 200}])
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "[0].status"


def test_timeout_fault_makes_the_client_time_out(
    make_model: MakeModel, make_client: MakeClient
) -> None:
    # Given a model that will hold the next request
    model = make_model()
    post_faults(model, [{"timeout": True}])
    client = make_client(model, max_retries=0, timeout=0.5)

    # When the client asks with a 0.5 s timeout, Then it times out
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)

    # And the server lets go of the request once the client has gone
    deadline = time.monotonic() + 5
    while model.stats().in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model.stats().in_flight == 0


def test_stop_cuts_hanging_requests_short(make_model: MakeModel) -> None:
    # Given a model holding a request for a minute, from a client that would wait that long
    model = make_model()
    model.add_faults([{"timeout": True, "hang_seconds": 60}])
    outcome: list[BaseException | None] = []

    def ask() -> None:
        with OpenAI(base_url=model.base_url, api_key="offline", max_retries=0) as client:
            try:
                client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)
                outcome.append(None)
            except openai.APIError as error:
                outcome.append(error)

    asker = threading.Thread(target=ask)
    asker.start()
    while model.stats().in_flight == 0:
        time.sleep(0.01)

    # When the server stops
    started = time.monotonic()
    model.stop()
    asker.join(10)

    # Then it stopped promptly and the client got an error rather than waiting a minute
    assert time.monotonic() - started < 5
    assert len(outcome) == 1
    assert isinstance(outcome[0], openai.APIError)


def test_delays_do_not_serialise_300_concurrent_requests(make_model: MakeModel) -> None:
    # Given a model that takes 1 s per answer
    model = make_model(delay_seconds=1.0)

    # When 300 requests arrive at once through the async client
    async def fire() -> float:
        async with AsyncOpenAI(base_url=model.base_url, api_key="offline", max_retries=0) as client:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"question {index}"}]
                    )
                    for index in range(300)
                )
            )
            elapsed = time.monotonic() - started
        assert all(r.choices[0].finish_reason == "stop" for r in responses)
        return elapsed

    elapsed = asyncio.run(fire())

    # Then they were served side by side
    stats = model.stats()
    assert stats.requests == 300
    assert stats.peak_in_flight >= 250
    # Served one by one they would take 300 s; the bound leaves room for a loaded machine,
    # where the client's own work for 300 requests alone can pass two seconds.
    assert elapsed < 10.0, f"300 concurrent 1 s requests took {elapsed:.2f}s"


def test_jitter_is_seeded(make_model: MakeModel, make_client: MakeClient) -> None:
    # Given two models with the same seed and jitter
    timings: list[list[float]] = []
    for _ in range(2):
        client = make_client(make_model(delay_jitter_seconds=0.3, seed=7))
        durations = []
        for _ in range(6):
            started = time.monotonic()
            client.chat.completions.create(model="m", messages=TRIAGE_MESSAGES)
            durations.append(time.monotonic() - started)
        timings.append(durations)

    # Then their delays follow the same sequence (to within scheduling noise)
    for first, second in zip(timings[0], timings[1], strict=True):
        assert abs(first - second) < 0.05
