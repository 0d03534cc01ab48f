"""An agent whose tool needs an operator's approval (`baton worker tests.actors.agents_approval`).

The tool records a keyed effect, so a test can tell whether it ran.
"""

from __future__ import annotations

from events import Event
from store import record_effect
from workers import Agent, Context, actor, tool


class ApprovalStart(Event, type="t_agents_approval.start"):
    target: str


@tool(approval=True)
def t_agents_deploy(target: str, ctx: Context) -> str:
    """Deploy the service to a target environment (an operator must approve)."""
    record_effect(
        ctx._runtime.store,
        idempotency_key=ctx.idempotency_key,
        run_id=ctx.run_id,
        kind="t_agents_deploy",
        target=target,
        payload=None,
    )
    return f"deployed to {target}"


deployer = Agent(
    name="t_agents_deployer",
    model="gpt-4.1-mini",
    instructions="Deploy to the target the user names, then report what happened.",
    tools=[t_agents_deploy],
)


@actor(on=ApprovalStart)
def t_agents_approval_start(event: ApprovalStart, ctx: Context) -> Event:
    return deployer.start(ctx, f"Please deploy.\ntarget: {event.target}")
