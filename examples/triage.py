"""A GitHub issue-triage agent: the demo, and the first agent a newcomer reads.

A `github.issues.opened` webhook starts a run; the agent searches the project's documents,
labels the issue, comments on it and answers with a TriageResult. Its tools write to the
`effects` table, a stand-in for GitHub's API, keyed by the step's idempotency key, so a
retried or replayed step never labels twice.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from events import Event
from store import record_effect
from workers import Agent, AgentFinished, Context, actor, tool
from workers.agents import search_documents


class GitHubUser(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    login: str


class GitHubIssue(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    number: int
    title: str
    body: str | None = None
    html_url: str
    user: GitHubUser


class GitHubRepository(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    full_name: str


class IssueOpened(Event, type="github.issues.opened"):
    """GitHub's `issues` webhook with action `opened`: we read the fields we need."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: Literal["opened"]
    issue: GitHubIssue
    repository: GitHubRepository


Label = Literal["bug", "enhancement", "question", "documentation"]


class TriageResult(BaseModel):
    labels: list[Label]
    priority: Literal["low", "medium", "high"]
    summary: str


@tool(idempotent=True)
def add_label(repo: str, number: int, label: Label, ctx: Context) -> str:
    """Add a label to a GitHub issue."""
    applied = record_effect(
        ctx._runtime.store,
        idempotency_key=ctx.idempotency_key,
        run_id=ctx.run_id,
        kind="label",
        target=f"{repo}#{number}",
        payload={"label": label},
    )
    return f"labelled {repo}#{number} {label!r}" + ("" if applied else " (already done)")


@tool(idempotent=True)
def post_comment(repo: str, number: int, body: str, ctx: Context) -> str:
    """Post a comment on a GitHub issue."""
    applied = record_effect(
        ctx._runtime.store,
        idempotency_key=ctx.idempotency_key,
        run_id=ctx.run_id,
        kind="comment",
        target=f"{repo}#{number}",
        payload={"body": body},
    )
    return f"commented on {repo}#{number}" + ("" if applied else " (already done)")


triage = Agent(
    name="triage",
    model="gpt-4.1-mini",
    instructions=(
        "You triage GitHub issues. Search the project's documents for context, add the labels "
        "that fit (bug, enhancement, question, documentation), post one short, kind comment "
        "that says what happens next, then answer with the labels, a priority and a one-line "
        "summary."
    ),
    tools=[search_documents, add_label, post_comment],
    output=TriageResult,
    max_steps=8,
    max_cost_usd=0.20,
    temperature=0,
)


@actor(on=IssueOpened, retries=3, timeout="2m")
def start_triage(event: IssueOpened, ctx: Context) -> Event:
    issue = event.issue
    return triage.start(
        ctx,
        f"Triage {event.repository.full_name}#{issue.number} opened by {issue.user.login}.\n"
        f"repo: {event.repository.full_name}\nnumber: {issue.number}\n"
        f"title: {issue.title}\n\n{issue.body or '(the issue has no description)'}",
    )


@actor(on=AgentFinished)
def record_triage(event: AgentFinished, ctx: Context) -> None:
    if event.agent == triage.name:
        ctx.memory["triage"] = event.output
