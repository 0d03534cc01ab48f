"""The agent loop as actors: every model call and every tool call is a durable step.

    agent.model_call ──(tool calls, fanned out)──► agent.tool_call x N ──► agent.tool_result
          ▲                                                                     │ (join)
          └──────────────────────── agent.tools_joined ◄────────────────────────┘
    agent.model_call ──(final answer)──► agent.finished   (or the parent agent's tool_result)

A response with a single tool call has nothing to join: its tool-call step appends the answer
and asks the model again itself (one step fewer per turn; the common case).

Model and tool calls are async: they wait on the network on the worker's event loop, not in
a thread, so one process keeps hundreds in flight.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection

from events import describe_validation
from store import ClaimedStep
from store._agents import (
    ModelCallInputs,
    RunTotals,
    Usage,
    append_messages,
    count_usage,
    finish_loop,
    model_call_inputs,
    read_model_call_inputs,
    record_response,
    record_tool_call,
    record_tool_result,
    tool_intent,
)
from store._recorded import OWN, Reusable, recorded_tool_result
from workers import _metrics
from workers._actor import actor, prepared_by
from workers._context import Context
from workers._errors import Wait
from workers._tracing import agent_span, chat_span, tool_span
from workers.agents._agent import HEAD_MESSAGES, Agent, agent_named, registered_agent
from workers.agents._events import (
    AgentFinished,
    ModelCallRequested,
    ParentCall,
    ToolCallFinished,
    ToolCallRequested,
)
from workers.agents._model import (
    BudgetExceeded,
    ModelRefused,
    ModelRequest,
    OutputInvalid,
    assistant_message,
    client_of,
    complete,
    prices_with,
    usage_of,
)
from workers.agents._pricing import price_of
from workers.agents._tool import Tool, ToolArgumentsInvalid


class OutcomeUnknown(Exception):
    """A non-idempotent tool may have run in an attempt that died: an operator decides."""


@actor(
    on=ModelCallRequested,
    name="baton.agent.model_call",
    retries=3,
    timeout="10m",
    throws=(ModelRefused, BudgetExceeded, OutputInvalid),
)
async def model_call(event: ModelCallRequested, ctx: Context) -> Any:
    agent = agent_named(event.agent)
    with agent_span(agent.name, agent.model, event.loop_id):
        return await _model_call(agent, event, ctx)


def _prepare_model_call(connection: Connection, step: ClaimedStep) -> ModelCallInputs | None:
    """What a model call reads before it asks, read by the transaction that claims its step."""
    data = step.event.data
    agent = registered_agent(str(data.get("agent")))
    if agent is None or not isinstance(data.get("seq"), int):
        return None  # The handler reads again, and says what is wrong.
    return read_model_call_inputs(
        connection,
        run_id=step.run_id,
        loop_id=str(data.get("loop_id")),
        step_id=step.id,
        recorded_from=step.origin_step_id if step.recorded else None,
        next_seq=data["seq"],
        head=HEAD_MESSAGES,
        window=agent.context_window,
    )


prepared_by(model_call, _prepare_model_call)


async def _model_call(agent: Agent, event: ModelCallRequested, ctx: Context) -> Any:
    runtime = ctx._runtime
    config = runtime.config
    prices = prices_with(config.model_prices)
    inputs = ctx._prepared
    if not isinstance(inputs, ModelCallInputs):
        inputs = await asyncio.to_thread(
            model_call_inputs,
            runtime.store,
            run_id=ctx.run_id,
            loop_id=event.loop_id,
            step_id=ctx.step_id,
            recorded_from=ctx.recorded_from,
            next_seq=event.seq,
            head=HEAD_MESSAGES,
            window=agent.context_window,
        )
    request = ModelRequest(agent.request(inputs.messages))
    reused = inputs.recorded.reusable(request.digest)
    if reused is not None and reused.source == OWN:
        # An earlier attempt of this step was answered (and, having asked, passed the budget).
        response = reused.response
        usage = usage_of(response, prices, asked=agent.model)
    else:
        _check_budget(agent, inputs.totals, request, prices)
        response, usage = await _ask(agent, event, ctx, request, prices, reused)
    reply = assistant_message(response)
    ctx.defer_write(
        lambda c: append_messages(
            c,
            loop_id=event.loop_id,
            run_id=ctx.run_id,
            step_id=ctx.step_id,
            start_seq=event.seq,
            messages=[reply],
        )
    )
    ctx.defer_write(
        lambda c: count_usage(
            c, run_id=ctx.run_id, loop_id=event.loop_id, step_id=ctx.step_id, usage=usage
        ),
        even_on_failure=True,
    )
    calls = reply.get("tool_calls") or []
    if calls:
        requested = [
            ToolCallRequested(
                agent=agent.name,
                loop_id=event.loop_id,
                call_id=call["id"],
                name=call["function"]["name"],
                arguments=call["function"]["arguments"],
                index=index,
                count=len(calls),
                seq=event.seq + 1,
                parent=event.parent,
            )
            for index, call in enumerate(calls)
        ]
        # Several calls fan out (a list opens a group that the join closes); a single call is
        # one event, so no group is opened that nothing would close.
        return requested if len(requested) > 1 else requested[0]
    return _final(agent, event, ctx, reply.get("content") or "")


async def _ask(
    agent: Agent,
    event: ModelCallRequested,
    ctx: Context,
    request: ModelRequest,
    prices: Any,
    reused: Reusable | None,
) -> tuple[dict[str, Any], Usage]:
    """The model's answer and its usage, kept as this step's record by the transaction that
    ends this attempt, whether it commits the step or records its failure: a retry then
    reuses the answer instead of paying for it again.

    A response to use without asking (DESIGN.md invariant 7) is an operator's edited one or,
    in a recorded fork, the parent's for the same request; it is kept as this step's own, so
    a retry reuses it.
    """
    runtime = ctx._runtime
    config = runtime.config
    started = time.perf_counter()
    if reused is not None:
        response = reused.response
    else:
        client = client_of(agent, config)
        with chat_span(request.data, agent.base_url or config.model_base_url) as chat:
            key = f"{ctx.idempotency_key}-{request.digest[:16]}"
            response = await complete(client, request, idempotency_key=key)
            chat.record(response)
    usage = usage_of(response, prices, asked=agent.model)
    if reused is None:
        _metrics.model_used(agent.name, agent.model, usage)
    ctx.defer_write(
        functools.partial(
            record_response,
            step_id=ctx.step_id,
            run_id=ctx.run_id,
            loop_id=event.loop_id,
            agent=agent.name,
            model=agent.model,
            request_hash=request.digest,
            request=request.text,
            response=response,
            usage=usage,
            latency_ms=0.0 if reused is not None else (time.perf_counter() - started) * 1000,
            attempt=ctx.attempt,
        ),
        even_on_failure=True,
    )
    return response, usage


def _final(agent: Agent, event: ModelCallRequested, ctx: Context, content: str) -> Any:
    output: Any = content
    if agent.output is not None:
        try:
            output = agent.output.model_validate_json(content).model_dump(mode="json")
        except ValidationError as error:
            problem = describe_validation(error)
            if event.repair:
                raise OutputInvalid(
                    f"agent {agent.name!r} answered twice with output that does not fit "
                    f"{agent.output.__name__}: {problem}. A replay in place asks the same "
                    "question and reuses this recorded answer; fork with the output mended: "
                    f"`baton replay {ctx.run_id} --from {ctx.step_id} --edit-output JSON "
                    "--reason ...`"
                ) from None
            # Tell the model once what was wrong, as the next user message, and ask again.
            correction = {
                "role": "user",
                "content": (
                    f"Your answer does not match the required {agent.output.__name__} schema: "
                    f"{problem}. Answer again with only a JSON object that matches it."
                ),
            }
            ctx.defer_write(
                lambda c: append_messages(
                    c,
                    loop_id=event.loop_id,
                    run_id=ctx.run_id,
                    step_id=ctx.step_id,
                    start_seq=event.seq + 1,
                    messages=[correction],
                )
            )
            return ModelCallRequested(
                agent=agent.name,
                loop_id=event.loop_id,
                seq=event.seq + 2,
                repair=True,
                parent=event.parent,
            )
    ctx.defer_write(lambda c: finish_loop(c, event.loop_id, output))
    parent = event.parent
    if parent is not None:
        return _answered(
            ToolCallFinished(
                agent=parent.agent,
                loop_id=parent.loop_id,
                call_id=parent.call_id,
                name=parent.name,
                content=output if isinstance(output, str) else json.dumps(output),
                index=parent.index,
                count=parent.count,
                seq=parent.seq,
                parent=parent.parent,
            ),
            ctx,
        )
    return AgentFinished(agent=agent.name, loop_id=event.loop_id, output=output)


def _check_budget(
    agent: Agent,
    totals: RunTotals,
    request: ModelRequest,
    prices: Any,
) -> None:
    """Stop before a model call that the policy does not allow, with the figures."""
    policy = agent.policy
    # Tokens and cost are the run's (sub-agents included); steps are this agent's loop's.
    spent = (
        f"in the run so far {totals.model_calls} model call(s), {totals.input_tokens:,} input "
        f"+ {totals.output_tokens:,} output tokens, ${totals.cost_usd:.4f}"
    )
    if totals.loop_model_calls >= policy.max_steps:
        raise BudgetExceeded(
            f"budget exceeded: agent {agent.name!r} reached max_steps={policy.max_steps} "
            f"({totals.loop_model_calls} model call(s) of its own); {spent}"
        )
    # A conservative estimate of the next request's input (messages, tools and the response
    # format are all read by the model): four characters a token.
    estimated = len(request.body) // 4
    used = totals.input_tokens + totals.output_tokens
    if policy.max_tokens is not None and used + estimated > policy.max_tokens:
        raise BudgetExceeded(
            f"budget exceeded: the next call (~{estimated:,} tokens) would pass "
            f"max_tokens={policy.max_tokens:,}; {spent}"
        )
    if policy.max_cost_usd is not None:
        price = price_of(agent.model, prices)
        if price is None:
            raise BudgetExceeded(
                f"agent {agent.name!r} has max_cost_usd but model {agent.model!r} has no price; "
                "add it to BATON_MODEL_PRICES"
            )
        next_cost = estimated * price.input / 1_000_000
        if totals.cost_usd + next_cost > policy.max_cost_usd:
            raise BudgetExceeded(
                f"budget exceeded: the next call (~${next_cost:.4f}) would pass "
                f"max_cost_usd=${policy.max_cost_usd:g}; {spent}"
            )


@actor(
    on=ToolCallRequested,
    name="baton.agent.tool_call",
    retries=3,
    timeout="10m",
    throws=(OutcomeUnknown,),
)
async def tool_call(event: ToolCallRequested, ctx: Context) -> Any:
    agent = agent_named(event.agent)
    target = agent.tool_named(event.name)
    if target is None:
        known = ", ".join(t.name for t in agent.tools) or "none"
        return _answer(event, ctx, f"error: there is no tool {event.name!r}; available: {known}")
    if isinstance(target, Agent):
        return _hand_off(target, event, ctx)
    try:
        arguments = target.validate(event.arguments)
    except ToolArgumentsInvalid as error:
        return _answer(event, ctx, f"error: invalid arguments for {event.name}: {error}")
    if target.approval:
        decision, data = await asyncio.to_thread(ctx.wait_for_any, ("approve", "reject"))
        if decision == "reject":
            reason = data.get("reason") or "no reason given"
            return _answer(event, ctx, f"rejected by an operator: {reason}")
    content = await _call_once(target, arguments, event, ctx)
    return _answer(event, ctx, content)


async def _call_once(
    target: Tool, arguments: dict[str, Any], event: ToolCallRequested, ctx: Context
) -> str:
    """Call a tool with its intent recorded first (DESIGN.md invariant 6); an idempotent one is
    recorded once, with its result, by the step's commit."""
    if ctx.recorded_from is not None:
        served = await _recorded_result(target, event, ctx)
        if served is not None:
            return served
    if target.idempotent:
        content = await _invoke(target, arguments, event, ctx)
        _keep_call(target, event, ctx, content)
        return content
    earlier = await asyncio.to_thread(
        tool_intent,
        ctx._runtime.store,
        step_id=ctx.step_id,
        run_id=ctx.run_id,
        loop_id=event.loop_id,
        call_id=event.call_id,
        tool=target.name,
        arguments=arguments_of(event),
        attempt=ctx.attempt,
        owner=ctx._runtime.owner,
    )
    replayed = earlier is not None and earlier.attempt <= ctx.attempt_base
    if earlier is not None and earlier.state == "intent" and not target.idempotent and not replayed:
        raise OutcomeUnknown(
            f"tool {target.name!r} is not idempotent and an earlier attempt may have called it "
            f"(attempt {earlier.attempt} died without a result). Check the outside world, then "
            f"`baton replay {ctx.run_id} --step {ctx.step_id} --reason ...` to call it again"
        )
    content = await _invoke(target, arguments, event, ctx)
    ctx.defer_write(lambda c: record_tool_result(c, ctx.step_id, content))
    return content


async def _invoke(
    target: Tool, arguments: dict[str, Any], event: ToolCallRequested, ctx: Context
) -> str:
    """The tool's answer: what it returned, or the error it raised, as text for the model."""
    ctx.agent_name = event.agent
    try:
        with tool_span(target.name, event.call_id, event.arguments) as span:
            result = await target.invoke(arguments, ctx)
            span.record(result)
    except Wait:
        # The tool waits for a signal (ctx.wait_for, ctx.sleep): the step parks, and the
        # tool is called again from the top when the signal comes. Only an idempotent tool
        # may be: another's intent, recorded before this call, would find the call unsettled.
        if not target.idempotent:
            raise TypeError(
                f"tool {target.name!r} waited for a signal, which calls it again when the "
                "signal comes; declare it @tool(idempotent=True) if that is safe, or gate it "
                "with approval=True instead"
            ) from None
        raise
    except Exception as error:
        # The model gets the failure as the tool's answer and may try something else.
        result = f"error: {type(error).__name__}: {error}"
    return _render(result)


def arguments_of(event: ToolCallRequested) -> Any:
    """The call's arguments as recorded (the model's JSON; validated before the call)."""
    return json.loads(event.arguments or "{}")


async def _recorded_result(target: Tool, event: ToolCallRequested, ctx: Context) -> str | None:
    """In a recorded fork: the parent's result for the same tool and arguments at this
    position, kept as this step's own by its commit; the tool is not called."""
    assert ctx.recorded_from is not None
    result = await asyncio.to_thread(
        recorded_tool_result,
        ctx._runtime.store,
        ctx.recorded_from,
        target.name,
        arguments_of(event),
    )
    if result is None:
        return None
    content = _render(result)
    _keep_call(target, event, ctx, content)
    return content


def _keep_call(target: Tool, event: ToolCallRequested, ctx: Context, content: str) -> None:
    """Record the call and its answer with the step's commit (no intent before it)."""
    ctx.defer_write(
        functools.partial(
            record_tool_call,
            step_id=ctx.step_id,
            run_id=ctx.run_id,
            loop_id=event.loop_id,
            call_id=event.call_id,
            tool=target.name,
            arguments=arguments_of(event),
            attempt=ctx.attempt,
            result=content,
        )
    )


def _render(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return json.dumps(result, default=str)


def _answer(
    event: ToolCallRequested, ctx: Context, content: str
) -> ToolCallFinished | ModelCallRequested:
    return _answered(
        ToolCallFinished(
            agent=event.agent,
            loop_id=event.loop_id,
            call_id=event.call_id,
            name=event.name,
            content=content,
            index=event.index,
            count=event.count,
            seq=event.seq,
            parent=event.parent,
        ),
        ctx,
    )


def _hand_off(target: Agent, event: ToolCallRequested, ctx: Context) -> ModelCallRequested:
    """Another agent as a tool: its loop runs in this run; its output is this call's answer."""
    try:
        request = json.loads(event.arguments or "{}")
    except json.JSONDecodeError:
        request = {}
    text = request.get("input") if isinstance(request, dict) else None
    parent = ParentCall(
        agent=event.agent,
        loop_id=event.loop_id,
        call_id=event.call_id,
        name=event.name,
        index=event.index,
        count=event.count,
        seq=event.seq,
        parent=event.parent,
    )
    return target.begin(ctx, str(text or event.arguments), parent=parent)


@actor(on=ToolCallFinished, name="baton.agent.tools_joined", join=True, retries=3)
def tools_joined(results: list[ToolCallFinished], ctx: Context) -> ModelCallRequested:
    """Every tool call of one model response has answered: hand the answers to the model."""
    return _next_model_call(results, ctx)


def _answered(answer: ToolCallFinished, ctx: Context) -> ToolCallFinished | ModelCallRequested:
    """A tool call's answer: to the join when its response made several calls; when it made
    only this one, there is nothing to wait for, and the next model call follows directly."""
    if answer.count == 1:
        return _next_model_call([answer], ctx)
    return answer


def _next_model_call(results: list[ToolCallFinished], ctx: Context) -> ModelCallRequested:
    """Append the tool answers to the conversation, in the calls' order, and ask again."""
    ordered = sorted(results, key=lambda r: r.index)
    first = ordered[0]
    messages = [
        {"role": "tool", "tool_call_id": r.call_id, "name": r.name, "content": r.content}
        for r in ordered
    ]
    ctx.defer_write(
        lambda c: append_messages(
            c,
            loop_id=first.loop_id,
            run_id=ctx.run_id,
            step_id=ctx.step_id,
            start_seq=first.seq,
            messages=messages,
        )
    )
    return ModelCallRequested(
        agent=first.agent, loop_id=first.loop_id, seq=first.seq + len(ordered), parent=first.parent
    )
