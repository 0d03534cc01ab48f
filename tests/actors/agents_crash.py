"""An agent for the crash tests (`baton worker tests.actors.agents_crash`): one slow, keyed tool.

The offline model fills the tool's arguments from the input's ``label: ...`` and
``pause: ...`` lines, so a test decides how long the tool sleeps.
"""

from __future__ import annotations

import time

from events import Event
from store import record_effect
from workers import Agent, Context, actor, tool


class CrashStart(Event, type="t_agents_crash.start"):
    label: str
    pause: float


@tool(idempotent=True)
def t_agents_crash_effect(label: str, pause: float, ctx: Context) -> str:
    """Apply a keyed effect on the outside world, then take a while to report back."""
    applied = record_effect(
        ctx._runtime.store,
        idempotency_key=ctx.idempotency_key,
        run_id=ctx.run_id,
        kind="t_agents_crash",
        target=label,
        payload={"attempt": ctx.attempt},
    )
    # Only the first attempt is slow: it is the one the test kills.
    if ctx.attempt == 1:
        time.sleep(pause)
    return f"applied {label}" if applied else f"applied {label} (already done)"


crash_agent = Agent(
    name="t_agents_crash",
    model="gpt-4.1-mini",
    instructions="Apply the effect the user names, once, then say that it is done.",
    tools=[t_agents_crash_effect],
    max_steps=4,
)


@actor(on=CrashStart, retries=2)
def t_agents_crash_start(event: CrashStart, ctx: Context) -> Event:
    return crash_agent.start(ctx, f"Apply it.\nlabel: {event.label}\npause: {event.pause}")
