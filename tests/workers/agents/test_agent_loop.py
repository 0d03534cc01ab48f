"""The agent loop on a real worker: tool calls fan out and join, bad arguments and failing
tools are answered to the model, provider errors are retried or refused, budgets stop a run."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from dramatiq.asyncio import get_event_loop_thread
from pydantic import BaseModel, ValidationError

from events import Event, describe_validation
from store import Store, conversation_of, run_detail, send_signal, tool_calls_of
from tests.conftest import wait_for_run
from workers import Agent, Context, Worker, actor, tool
from workers.agents import ToolArgumentsInvalid, _model
from workers.agents.offline_model import Cassette, OfflineModelHandle

StartModel = Callable[..., OfflineModelHandle]
StartAgentWorker = Callable[..., Worker]
ModelCalls = Callable[[str], list[dict[str, Any]]]

# -- the agents ------------------------------------------------------------------------------

# The three parallel tools meet here: if they ran one after another, the first would time out.
meeting = threading.Barrier(3, timeout=15)


@tool
def t_agents_fan_slow(topic: str) -> str:
    """Look the topic up in the slow archive."""
    meeting.wait()
    time.sleep(0.6)
    return "alpha from the archive"


@tool
def t_agents_fan_medium(topic: str) -> str:
    """Look the topic up in the wiki."""
    meeting.wait()
    time.sleep(0.3)
    return "beta from the wiki"


@tool
def t_agents_fan_fast(topic: str) -> str:
    """Look the topic up in the cache."""
    meeting.wait()
    return "gamma from the cache"


fan_out = Agent(
    name="t_agents_fan_out",
    model="gpt-4.1-mini",
    instructions="Look the topic up everywhere at once, then summarise.",
    tools=[t_agents_fan_slow, t_agents_fan_medium, t_agents_fan_fast],
)

doubled: list[int] = []


@tool
def t_agents_double(n: int) -> int:
    """Double a whole number."""
    doubled.append(n)
    return n * 2


strict = Agent(
    name="t_agents_strict",
    model="gpt-4.1-mini",
    instructions="Double the number the user gives with the tool.",
    tools=[t_agents_double],
)


@tool
def t_agents_explode(reason: str) -> str:
    """Try something that fails."""
    raise RuntimeError(f"t_agents: the disk is full ({reason})")


fragile = Agent(
    name="t_agents_fragile",
    model="gpt-4.1-mini",
    instructions="Try the tool; if it fails, say what went wrong.",
    tools=[t_agents_explode],
)

plain = Agent(
    name="t_agents_plain",
    model="gpt-4.1-mini",
    instructions="Answer the question in one line.",
)

noop_calls: list[str] = []


@tool
def t_agents_noop(note: str) -> str:
    """Do nothing, successfully."""
    noop_calls.append(note)
    return "nothing done"


one_step = Agent(
    name="t_agents_one_step",
    model="gpt-4.1-mini",
    instructions="Call the tool, then answer.",
    tools=[t_agents_noop],
    max_steps=1,
)


@tool
def t_agents_big_report(topic: str) -> str:
    """Fetch the full report on a topic (it is long)."""
    return "word " * 10_000


thrifty = Agent(
    name="t_agents_thrifty",
    model="gpt-4.1-mini",
    instructions="Fetch the report, then summarise it.",
    tools=[t_agents_big_report],
    max_cost_usd=0.002,
)


def _await_go(ctx: Context) -> str:
    """Wait for the operator's go, then report who gave it."""
    return f"go from {ctx.wait_for('go')['by']}"


# The same function as a tool declared idempotent, and as one that is not.
t_agents_await_go = tool(_await_go, name="t_agents_await_go", idempotent=True)
t_agents_await_rashly = tool(_await_go, name="t_agents_await_rashly")
patient, rash = (
    Agent(
        name=name,
        model="gpt-4.1-mini",
        instructions="Wait for the go, then answer.",
        tools=[waiting],
    )
    for name, waiting in (
        ("t_agents_patient", t_agents_await_go),
        ("t_agents_rash", t_agents_await_rashly),
    )
)


class Verdict(BaseModel):
    verdict: str
    score: int


judge = Agent(
    name="t_agents_judge",
    model="gpt-4.1-mini",
    instructions="Judge the text; answer with a verdict and a score.",
    output=Verdict,
)


# Deployed under a name of its own, as on Azure: responses name the model their own way.
deployed = Agent(
    name="t_agents_deployed",
    model="gpt-4.1-mini",
    instructions="Answer in one line.",
    max_cost_usd=1.0,
)


@tool(idempotent=True)
def t_agents_rate(currency: str) -> str:
    """Today's exchange rate from euros to a currency."""
    return f"1 EUR = 1.08 {currency}"


# Hand-off: the lead offers the specialist, an agent on a bigger model, as its only tool.
specialist = Agent(
    name="t_agents_specialist",
    model="gpt-4.1",
    instructions="You know exchange rates. Look the rate up with the tool, then answer.",
    tools=[t_agents_rate],
    description="Answers questions about exchange rates.",
)
lead = Agent(
    name="t_agents_lead",
    model="gpt-4.1-mini",
    instructions="Ask the specialist, then answer the user in one line.",
    tools=[specialist],
)

# The specialist in parallel with a plain tool: two calls, one of them a whole loop.
lead_pair = Agent(
    name="t_agents_lead_pair",
    model="gpt-4.1-mini",
    instructions="Ask the specialist and look the rate up yourself, then compare.",
    tools=[specialist, t_agents_rate],
)


class LoopStart(Event, type="t_agents_loop.start"):
    agent: str
    input: str


AGENTS = {
    a.name: a
    for a in (
        *(fan_out, strict, fragile, plain, one_step, thrifty, deployed, judge, patient, rash),
        *(lead, lead_pair),
    )
}


@actor(on=LoopStart)
def t_agents_loop_start(event: LoopStart, ctx: Context) -> Event:
    return AGENTS[event.agent].start(ctx, event.input)


# -- helpers ---------------------------------------------------------------------------------


def start(worker: Worker, agent: Agent, text: str) -> str:
    return worker.runtime.start_run(LoopStart(agent=agent.name, input=text)).run_id


def steps_of(store: Store, run_id: str, actor: str) -> list[dict[str, Any]]:
    return [s for s in run_detail(store, run_id)["steps"] if s["actor"] == actor]


def completion(message: dict[str, Any], prompt_tokens: int = 20) -> dict[str, Any]:
    """A chat.completion body as a provider sends it."""
    return {
        "id": f"chatcmpl-t-agents-{prompt_tokens}",
        "object": "chat.completion",
        "created": 1_735_689_600,
        "model": "gpt-4.1-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, **message},
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": 25},
    }


# -- the worker's clients ---------------------------------------------------------------------


def test_a_worker_makes_its_agents_clients_before_it_takes_a_message(
    offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a worker started with the agents of this module registered
    model = offline_model()
    worker = agent_worker(model)

    # Then its event loop already holds the client each of them will call its model with,
    # so the first model calls do not pay for making one (loading HTTP and TLS set-up)
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None
    config = worker.runtime.config
    made = _model._clients.get(loop_thread.loop, {})
    for agent in (fan_out, strict):
        key = (
            agent.base_url or config.model_base_url,
            agent.api_key or config.model_api_key,
            config.model_timeout_seconds,
            config.model_max_retries,
        )
        assert key in made, f"no client made ahead for {agent.name}"
    assert {key[0] for key in made} >= {model.base_url}


def test_a_finished_step_leaves_no_reference_cycle_for_the_collector(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a worker, and the collector off so that what cycles leave behind is kept
    worker = agent_worker(offline_model())
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # When an agent runs its model calls and a tool call, whose steps defer writes
        run_id = start(worker, strict, "Double 21.")
        assert wait_for_run(store, run_id) == "succeeded"
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, Context)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    # Then no step's context was left in a cycle (its deferred writes refer back to it), so
    # each was freed, with the request, answer and window it held, as its step ended
    assert left == []


# -- fan out and join ------------------------------------------------------------------------


def test_parallel_tool_calls_fan_out_and_the_next_model_call_sees_every_result_in_order(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given an agent with three tools that only return once all three are running, and then
    # finish in the reverse of the order the model called them
    worker = agent_worker(offline_model())

    # When the model calls all three at once
    run_id = start(worker, fan_out, "topic: durable agents")

    # Then they ran as three concurrent steps, joined by one step
    assert wait_for_run(store, run_id) == "succeeded"
    assert len(steps_of(store, run_id, "baton.agent.tool_call")) == 3
    assert len(steps_of(store, run_id, "baton.agent.tools_joined")) == 1
    # And the second model call was sent one tool message per call, in the calls' order
    first, second = recorded_model_calls(run_id)
    calls = first["response"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == [t.name for t in fan_out.tools]
    sent = second["request"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool", "tool"]
    assert [m["tool_call_id"] for m in sent[3:]] == [c["id"] for c in calls]
    assert [m["content"] for m in sent[3:]] == [
        "alpha from the archive",
        "beta from the wiki",
        "gamma from the cache",
    ]
    # And its answer reflects every result
    (loop,) = run_detail(store, run_id)["agents"]
    for result in ("alpha", "beta", "gamma"):
        assert result in loop["output"]


# -- the model's mistakes and the tools' failures go back to the model -----------------------


def test_an_agent_as_a_tool_runs_its_own_loop_on_its_own_model_and_answers_the_caller(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a lead agent whose only tool is a specialist agent with a model of its own
    worker = agent_worker(offline_model())

    # When the lead runs and calls the specialist
    run_id = start(worker, lead, "How many dollars is one euro?")

    # Then the specialist ran a loop of its own, on its own model, inside the same run
    assert wait_for_run(store, run_id) == "succeeded"
    calls = recorded_model_calls(run_id)
    assert [c["model"] for c in calls] == ["gpt-4.1-mini", "gpt-4.1", "gpt-4.1", "gpt-4.1-mini"]
    assert [c["agent"] for c in calls] == [lead.name, specialist.name, specialist.name, lead.name]
    assert [t["tool"] for t in tool_calls_of(store, run_id)] == [t_agents_rate.name]
    # And its final answer came back to the lead as the answer to that one tool call, with no
    # join step in between (a single call has nothing to wait for)
    lead_call = calls[0]["response"]["choices"][0]["message"]["tool_calls"][0]
    answer = calls[2]["response"]["choices"][0]["message"]["content"]
    assert answer
    assert calls[3]["request"]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": lead_call["id"],
        "content": answer,
    }
    assert steps_of(store, run_id, "baton.agent.tools_joined") == []
    # And only the lead's output finishes the run
    finished = [e for e in run_detail(store, run_id)["events"] if e["type"] == "agent.finished"]
    assert [e["data"]["agent"] for e in finished] == [lead.name]


def test_an_agent_called_in_parallel_with_a_tool_is_joined_with_it(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a lead agent that calls the specialist (whose own loop makes one tool call) and
    # a plain tool at once
    worker = agent_worker(offline_model())

    # When it runs
    run_id = start(worker, lead_pair, "Is the rate the specialist quotes today's rate?")

    # Then the specialist's answer and the tool's answer met in one join, and the lead's next
    # call was sent both, in the order it called them
    assert wait_for_run(store, run_id) == "succeeded"
    assert len(steps_of(store, run_id, "baton.agent.tools_joined")) == 1
    calls = recorded_model_calls(run_id)
    assert [c["agent"] for c in calls] == [
        lead_pair.name,
        specialist.name,
        specialist.name,
        lead_pair.name,
    ]
    asked = calls[0]["response"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in asked] == [specialist.name, t_agents_rate.name]
    answers = calls[3]["request"]["messages"][-2:]
    assert [m["tool_call_id"] for m in answers] == [c["id"] for c in asked]
    assert answers[0]["content"] == calls[2]["response"]["choices"][0]["message"]["content"]
    assert answers[1]["content"].startswith("1 EUR = 1.08 ")


def test_invalid_tool_arguments_are_answered_with_the_validation_error(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a cassette in which the model calls the tool with a word for a number, is told
    # what was wrong, and answers
    bad_call = {
        "id": "call_t_agents_bad",
        "type": "function",
        "function": {"name": "t_agents_double", "arguments": '{"n": "many"}'},
    }
    with pytest.raises(ToolArgumentsInvalid) as invalid:
        t_agents_double.validate('{"n": "many"}')
    answer = f"error: invalid arguments for t_agents_double: {invalid.value}"
    opening = [
        {"role": "system", "content": strict.instructions},
        {"role": "user", "content": "Double many."},
    ]
    assistant = {"role": "assistant", "content": None, "tool_calls": [bad_call]}
    told = {"role": "tool", "tool_call_id": bad_call["id"], "content": answer}
    cassette = Cassette()
    cassette.record(strict.request(opening), completion({"tool_calls": [bad_call]}))
    cassette.record(
        strict.request([*opening, assistant, told]),
        completion({"content": "I need a whole number to double."}, prompt_tokens=40),
    )
    model = offline_model(cassette=cassette)
    worker = agent_worker(model)
    doubled.clear()

    # When the agent runs
    run_id = start(worker, strict, "Double many.")

    # Then the run succeeds: the model was asked again with the validation error as the
    # tool's answer (the cassette matched both requests), and the tool never ran
    assert wait_for_run(store, run_id) == "succeeded"
    assert model.stats().cassette_position == 2
    assert doubled == []
    tool_message = conversation_of(store, run_id)[3]
    assert tool_message["role"] == "tool"
    assert tool_message["content"] == answer
    assert "n: Input should be a valid integer" in answer
    assert tool_calls_of(store, run_id) == []


def test_a_tool_that_raises_answers_the_model_with_its_error(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given an agent whose only tool raises
    worker = agent_worker(offline_model())

    # When it runs
    run_id = start(worker, fragile, "reason: testing")

    # Then the run succeeds, the tool's step was not retried and its error was the answer
    assert wait_for_run(store, run_id) == "succeeded"
    (tool_step,) = steps_of(store, run_id, "baton.agent.tool_call")
    assert tool_step["state"] == "succeeded" and tool_step["attempts"] == 1
    expected = "error: RuntimeError: t_agents: the disk is full (testing)"
    assert recorded_model_calls(run_id)[1]["request"]["messages"][-1]["content"] == expected
    (call,) = tool_calls_of(store, run_id)
    assert call["state"] == "done" and call["result"] == expected
    (loop,) = run_detail(store, run_id)["agents"]
    assert "the disk is full" in loop["output"]


# -- provider errors --------------------------------------------------------------------------


def test_a_500_and_a_429_with_retry_after_are_retried_by_the_client(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a model that fails once with a 500, then rate-limits for 1 s, then answers
    model = offline_model()
    model.add_faults([{"status": 500}, {"status": 429, "retry_after": 1}])
    worker = agent_worker(model)

    # When an agent asks it
    run_id = start(worker, plain, "What is Baton?")

    # Then the openai client retried both inside one step attempt, and the run succeeded
    assert wait_for_run(store, run_id) == "succeeded"
    stats = model.stats()
    assert stats.requests == 3
    assert stats.by_status == {200: 1, 429: 1, 500: 1}
    (step,) = steps_of(store, run_id, "baton.agent.model_call")
    assert step["attempts"] == 1
    (call,) = recorded_model_calls(run_id)
    assert call["latency_ms"] >= 1000  # it waited as Retry-After said


def test_a_429_the_client_gives_up_on_retries_the_step_after_its_retry_after(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a model that rate-limits the next request for 1.5 s, and a worker whose client
    # does not retry (as when Retry-After is longer than the openai client will wait)
    model = offline_model()
    model.add_faults([{"status": 429, "retry_after": 1.5}])
    worker = agent_worker(model, model_max_retries=0)

    # When an agent asks it
    run_id = start(worker, plain, "What is Baton?")

    # Then the step failed its first attempt as rate-limited, and its second attempt waited
    # as Retry-After said rather than its usual backoff (50 ms here), then succeeded
    assert wait_for_run(store, run_id) == "succeeded"
    assert model.stats().by_status == {200: 1, 429: 1}
    (step,) = steps_of(store, run_id, "baton.agent.model_call")
    first, second = step["attempt_history"]
    assert first["error_type"] == "ModelRateLimited"
    assert "rate-limited (429)" in first["error_message"]
    assert "retry after 1.5 s" in first["error_message"]
    assert second["started_at"] - first["ended_at"] >= 1.5


def test_a_429_for_no_quota_left_fails_the_step_at_once(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a model whose account has no quota left (a 429 that waiting will not cure)
    model = offline_model()
    message = "t_agents: You exceeded your current quota, please check your plan."
    model.add_faults([{"status": 429, "code": "insufficient_quota", "message": message}])
    worker = agent_worker(model, model_max_retries=0)

    # When an agent asks it
    run_id = start(worker, plain, "What is Baton?")

    # Then the run failed on the first attempt, with the provider's message and code
    assert wait_for_run(store, run_id) == "failed"
    (step,) = steps_of(store, run_id, "baton.agent.model_call")
    assert step["state"] == "failed" and step["attempts"] == 1
    error = run_detail(store, run_id)["run"]["error"]
    assert "ModelRefused" in error and "insufficient_quota" in error and message in error
    assert model.stats().requests == 1


def test_a_permanent_400_fails_the_step_at_once_with_the_providers_message(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a model that refuses the next request as invalid
    model = offline_model()
    model.add_faults([{"status": 400, "message": "t_agents: 'temperature' must be <= 2"}])
    worker = agent_worker(model)

    # When an agent asks it
    run_id = start(worker, plain, "What is Baton?")

    # Then the run fails on the first attempt, with the provider's words, and no retry
    assert wait_for_run(store, run_id) == "failed"
    (step,) = steps_of(store, run_id, "baton.agent.model_call")
    assert step["state"] == "failed" and step["attempts"] == 1
    error = run_detail(store, run_id)["run"]["error"]
    assert "ModelRefused" in error
    assert "(400, injected_fault): t_agents: 'temperature' must be <= 2" in error
    assert model.stats().requests == 1


# -- budgets ----------------------------------------------------------------------------------


def test_max_steps_stops_the_run_before_the_next_model_call(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given an agent allowed one model call, with a tool the model will call
    model = offline_model()
    worker = agent_worker(model)
    noop_calls.clear()

    # When it runs
    run_id = start(worker, one_step, "note: hello")

    # Then the tool ran, but the second model call was refused with the figures
    assert wait_for_run(store, run_id) == "failed"
    assert noop_calls == ["hello"]
    error = run_detail(store, run_id)["run"]["error"]
    assert "BudgetExceeded" in error and "budget exceeded" in error
    assert "max_steps=1 (1 model call(s) of its own)" in error
    assert "in the run so far 1 model call(s)" in error
    # And no further request reached the model, nor was the refused step retried
    assert model.stats().requests == 1
    second = steps_of(store, run_id, "baton.agent.model_call")[1]
    assert second["state"] == "failed" and second["attempts"] == 1


def test_a_tool_that_waits_for_a_signal_parks_its_step_until_it_comes(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given an agent whose (idempotent) tool waits for the operator's "go"
    worker = agent_worker(offline_model())

    # When it runs, the run parks in the tool's step
    run_id = start(worker, patient, "Go?")
    assert wait_for_run(store, run_id, until=frozenset({"waiting"})) == "waiting"
    (wait,) = run_detail(store, run_id)["waits"]
    assert (wait["name"], wait["state"]) == ("go", "open")

    # Then the signal resumes it, and the tool's answer carries the signal's data
    worker.runtime.publish(send_signal(store, run_id, "go", {"by": "ops"}), confirm_now=True)
    assert wait_for_run(store, run_id) == "succeeded"
    answers = [m["content"] for m in conversation_of(store, run_id) if m["role"] == "tool"]
    assert answers == ["go from ops"]


def test_a_tool_that_is_not_idempotent_may_not_wait_for_a_signal(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given an agent whose tool, not declared idempotent, waits for a signal
    worker = agent_worker(offline_model())

    # When it runs
    run_id = start(worker, rash, "Go?")

    # Then the run fails at once saying why and what to do, and parks nothing
    assert wait_for_run(store, run_id) == "failed"
    error = run_detail(store, run_id)["run"]["error"]
    assert "'t_agents_await_rashly' waited for a signal" in error
    assert "idempotent=True" in error and "approval=True" in error
    (step,) = steps_of(store, run_id, "baton.agent.tool_call")
    assert step["attempts"] == 1


def judged(answers: list[str]) -> Cassette:
    """A cassette in which the judge answers ``answers[0]``, is told once what does not fit
    Verdict, and answers ``answers[1]``."""
    opening = [
        {"role": "system", "content": judge.instructions},
        {"role": "user", "content": "Judge: fine."},
    ]
    with pytest.raises(ValidationError) as invalid:
        Verdict.model_validate_json(answers[0])
    told = {
        "role": "user",
        "content": (
            f"Your answer does not match the required Verdict schema: "
            f"{describe_validation(invalid.value)}. Answer again with only a JSON object "
            "that matches it."
        ),
    }
    first = {"role": "assistant", "content": answers[0]}
    cassette = Cassette()
    cassette.record(judge.request(opening), completion({"content": answers[0]}, prompt_tokens=30))
    cassette.record(
        judge.request([*opening, first, told]),
        completion({"content": answers[1]}, prompt_tokens=60),
    )
    return cassette


def test_an_output_that_does_not_fit_is_sent_back_once_with_what_was_wrong(
    store: Store, offline_model: StartModel, agent_worker: StartAgentWorker
) -> None:
    # Given a model that first leaves out a required field, then answers in full
    model = offline_model(
        cassette=judged(['{"verdict": "fine"}', '{"verdict": "fine", "score": 4}'])
    )
    worker = agent_worker(model)

    # When the judge runs
    run_id = start(worker, judge, "Judge: fine.")

    # Then the model was told what was missing (the cassette matched that request) and the
    # run finished with the validated output
    assert wait_for_run(store, run_id) == "succeeded"
    assert model.stats().cassette_position == 2
    (loop,) = run_detail(store, run_id)["agents"]
    assert loop["output"] == {"verdict": "fine", "score": 4}


def test_an_output_that_does_not_fit_twice_fails_the_run_and_both_calls_are_paid_for(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given a model that leaves out a required field, and again when told
    model = offline_model(cassette=judged(['{"verdict": "fine"}', '{"score": "high"}']))
    worker = agent_worker(model)

    # When the judge runs
    run_id = start(worker, judge, "Judge: fine.")

    # Then the run failed with what did not fit, without a retry or a third request
    assert wait_for_run(store, run_id) == "failed"
    error = run_detail(store, run_id)["run"]["error"]
    assert "OutputInvalid" in error and "answered twice" in error and "Verdict" in error
    assert "score" in error and "verdict" in error
    assert model.stats().requests == 2
    second = steps_of(store, run_id, "baton.agent.model_call")[1]
    # And it says how to go on, since a replay in place would reuse the same answer
    assert f"baton replay {run_id} --from {second['id']} --edit-output JSON" in error
    assert second["state"] == "failed" and second["attempts"] == 1
    # And the run's totals count both answers, the failed step's too: it was paid for
    calls = recorded_model_calls(run_id)
    assert len(calls) == 2
    run = run_detail(store, run_id)["run"]
    assert run["model_calls"] == 2
    assert run["input_tokens"] == 30 + 60
    assert run["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))


def test_an_answer_naming_a_model_without_a_price_is_priced_as_the_model_asked_for(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given an endpoint (an Azure deployment, a proxy's alias) that answers a gpt-4.1-mini
    # request in the name of a model the price table does not know
    opening = [
        {"role": "system", "content": deployed.instructions},
        {"role": "user", "content": "Say hello."},
    ]
    answer = {**completion({"content": "Hello."}, prompt_tokens=1000), "model": "t-agents-eu-1"}
    cassette = Cassette()
    cassette.record(deployed.request(opening), answer)
    worker = agent_worker(offline_model(cassette=cassette))

    # When an agent with a cost budget calls it
    run_id = start(worker, deployed, "Say hello.")

    # Then the call is priced as gpt-4.1-mini (1,000 input and 5 output tokens), not as $0,
    # and the run's total, which the budget is checked against, holds that cost
    assert wait_for_run(store, run_id) == "succeeded"
    (call,) = recorded_model_calls(run_id)
    expected = (1000 * 0.40 + 5 * 1.60) / 1_000_000
    assert call["cost_usd"] == pytest.approx(expected)
    assert run_detail(store, run_id)["run"]["cost_usd"] == pytest.approx(expected)


def test_max_cost_stops_the_run_before_a_call_that_would_pass_it(
    store: Store,
    offline_model: StartModel,
    agent_worker: StartAgentWorker,
    recorded_model_calls: ModelCalls,
) -> None:
    # Given an agent with a $0.002 budget whose tool returns a long report (~10k tokens)
    model = offline_model()
    worker = agent_worker(model)

    # When it runs
    run_id = start(worker, thrifty, "topic: costs")

    # Then the first call was made, but the one that would read the report was refused
    assert wait_for_run(store, run_id) == "failed"
    error = run_detail(store, run_id)["run"]["error"]
    assert "budget exceeded" in error
    assert "max_cost_usd=$0.002;" in error
    (first,) = recorded_model_calls(run_id)
    assert f"${first['cost_usd']:.4f}" in error
    assert "so far 1 model call(s)" in error
    assert model.stats().requests == 1
    run = run_detail(store, run_id)["run"]
    assert run["model_calls"] == 1 and 0 < run["cost_usd"] < 0.002
