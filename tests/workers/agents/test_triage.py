"""The demo's triage agent end to end: a GitHub payload in, labels, a comment and a
TriageResult out, over real HTTP to the offline model; then the same run from a cassette."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from examples.triage import IssueOpened, TriageResult
from store import Store, conversation_of, effects_of_run, read_memory, run_detail
from tests.conftest import REPO, wait_for_run
from workers import Worker
from workers.agents import DEFAULT_PRICES
from workers.agents.offline_model import Cassette, OfflineModelHandle

PAYLOADS = REPO / "examples" / "payloads"
ModelCalls = Callable[[str], list[dict[str, Any]]]
StartModel = Callable[..., OfflineModelHandle]
StartAgentWorker = Callable[..., Worker]


def issue(name: str, **changes: Any) -> IssueOpened:
    """The webhook payload in ``examples/payloads/NAME``, parsed as the gateway parses it."""
    payload = json.loads((PAYLOADS / name).read_text())
    payload["issue"].update(changes)
    return IssueOpened.model_validate(payload)


def expected_cost(call: dict[str, Any]) -> float:
    price = DEFAULT_PRICES["gpt-4.1-mini"]
    assert price.cached_input is not None
    cached, output = int(call["cached_tokens"]), int(call["output_tokens"])
    uncached = int(call["input_tokens"]) - cached
    return (
        uncached * price.input + cached * price.cached_input + output * price.output
    ) / 1_000_000


@pytest.mark.parametrize(
    "payload", ["github.issues.opened.json", "github.issues.opened.with-empty-body.json"]
)
def test_triage_labels_comments_and_answers_with_usage_and_an_ordered_conversation(
    payload: str,
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a worker whose model is the offline model in its default mode
    model = offline_model()
    worker = agent_worker(model)

    # When GitHub's `issues.opened` payload starts a run
    run_id = worker.runtime.start_run(issue(payload)).run_id

    # Then the run succeeds with a TriageResult in memory
    assert wait_for_run(store, run_id) == "succeeded"
    found, triage = read_memory(store, run_id, "triage")
    assert found
    result = TriageResult.model_validate(triage)
    assert result.labels and result.summary
    # And the issue was labelled and commented on, once each
    effects = effects_of_run(store, run_id)
    assert sorted(e["kind"] for e in effects) == ["comment", "label"]
    assert {e["target"] for e in effects} == {"Codertocat/Hello-World#1"}
    label = next(e for e in effects if e["kind"] == "label")
    assert label["payload"]["label"] in result.labels
    # And the run's totals are the sum of its two model calls, priced as gpt-4.1-mini
    calls = recorded_model_calls(run_id)
    assert len(calls) == 2 and model.stats().requests == 2
    run = run_detail(store, run_id)["run"]
    assert run["model_calls"] == 2
    assert run["input_tokens"] == sum(c["input_tokens"] for c in calls) > 0
    assert run["output_tokens"] == sum(c["output_tokens"] for c in calls) > 0
    assert run["cost_usd"] > 0
    assert run["cost_usd"] == pytest.approx(sum(expected_cost(c) for c in calls), rel=1e-9)
    # And the conversation was appended in order with no gaps: instructions, input, the tool
    # calls, one answer per call (in the calls' order), the final answer
    messages = conversation_of(store, run_id)
    assert [m["seq"] for m in messages] == list(range(len(messages)))
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "tool", "tool", "tool", "assistant"]
    call_ids = [call["id"] for call in messages[2]["tool_calls"]]
    assert [m["tool_call_id"] for m in messages[3:6]] == call_ids
    assert TriageResult.model_validate_json(messages[-1]["content"]) == result
    if "empty-body" in payload:
        assert "(the issue has no description)" in messages[1]["content"]


def record_triage(
    store: Store, model_calls: ModelCalls, worker: Any, **changes: Any
) -> tuple[str, Cassette]:
    """Run the triage agent once and make a cassette of its model calls."""
    run_id = worker.runtime.start_run(issue("github.issues.opened.json", **changes)).run_id
    assert wait_for_run(store, run_id) == "succeeded"
    cassette = Cassette()
    for call in model_calls(run_id):
        cassette.record(call["request"], call["response"])
    return run_id, cassette


def test_triage_replays_from_a_cassette_recorded_from_its_model_calls(
    store: Store,
    tmp_path: Path,
    offline_model: StartModel,
    agent_workers: Any,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a cassette recorded from the model_calls rows of a default-mode run, saved to disk
    recorder = agent_workers.start(offline_model())
    first_run, cassette = record_triage(store, recorded_model_calls, recorder)
    agent_workers.stop(recorder)
    cassette.save(tmp_path / "triage.json")
    assert len(cassette.exchanges) == 2

    # When a worker talks to an offline model that replays that cassette
    player = offline_model(cassette=Cassette.load(tmp_path / "triage.json"))
    worker = agent_workers.start(player)
    run_id = worker.runtime.start_run(issue("github.issues.opened.json")).run_id

    # Then the run succeeds with the same result, every exchange replayed in order
    assert wait_for_run(store, run_id) == "succeeded"
    assert read_memory(store, run_id, "triage") == read_memory(store, first_run, "triage")
    stats = player.stats()
    assert stats.cassette_position == 2
    assert stats.by_status == {200: 2}
    assert [e["kind"] for e in effects_of_run(store, run_id)].count("label") == 1


def test_a_changed_prompt_fails_loudly_against_the_cassette(
    store: Store,
    offline_model: StartModel,
    agent_workers: Any,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a cassette of a triage run
    recorder = agent_workers.start(offline_model())
    _, cassette = record_triage(store, recorded_model_calls, recorder)
    agent_workers.stop(recorder)
    player = offline_model(cassette=cassette)
    worker = agent_workers.start(player)

    # When an issue with another title (so another prompt) is triaged against it
    changed = issue("github.issues.opened.json", title="The README has a broken link")
    run_id = worker.runtime.start_run(changed).run_id

    # Then the run fails on its first model call with the cassette's mismatch message: the
    # 400 is permanent, so neither the client nor the step retried it
    assert wait_for_run(store, run_id) == "failed"
    detail = run_detail(store, run_id)
    error = detail["run"]["error"]
    assert "ModelRefused" in error
    assert "cassette mismatch at exchanges[0]" in error
    assert "messages[1].content" in error
    (step,) = [s for s in detail["steps"] if s["actor"] == "baton.agent.model_call"]
    assert step["state"] == "failed" and step["attempts"] == 1
    assert player.stats().by_status == {400: 1}
    assert effects_of_run(store, run_id) == []
