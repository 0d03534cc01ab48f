"""Tiny actors the gateway's tests deliver to: typed payloads, a generic payload, a wait."""

from __future__ import annotations

from pydantic import AliasPath, ConfigDict, Field

from events import Event
from gateway import webhook_event
from workers import Context, actor

# Flipped by a test to make ``flaky`` fail, then succeed on replay.
FAILING = {"on": False}


class Pinged(Event, type="test.gateway.pinged"):
    """The ``data`` of a Standard Webhooks delivery of type test.gateway.pinged."""

    n: int


class Ponged(Event, type="test.gateway.ponged"):
    n: int


@actor(on=Pinged)
def pong(event: Pinged, ctx: Context) -> Ponged:
    return Ponged(n=event.n + 1)


class CommentCreated(Event, type="github.issue_comment.created"):
    """Three fields of GitHub's issue_comment payload, reached through the payload's nesting."""

    model_config = ConfigDict(extra="ignore", validate_by_name=True)

    repo: str = Field(validation_alias=AliasPath("repository", "full_name"))
    number: int = Field(validation_alias=AliasPath("issue", "number"))
    comment: str = Field(validation_alias=AliasPath("comment", "body"))


class Noted(Event, type="test.gateway.noted"):
    repo: str
    number: int


@actor(on=CommentCreated)
def note_comment(event: CommentCreated, ctx: Context) -> Noted:
    ctx.memory["comment"] = event.comment
    return Noted(repo=event.repo, number=event.number)


# Any payload, carried whole.
IssueLabeled = webhook_event("github.issues.labeled")


@actor(on=IssueLabeled)
def note_label(event: Event, ctx: Context) -> None:
    ctx.memory["label"] = event.payload["label"]["name"]  # type: ignore[attr-defined]


class Strict(Event, type="test.gateway.strict"):
    """Declares no config: unknown fields in a payload are refused."""

    n: int


@actor(on=Strict)
def strict(event: Strict, ctx: Context) -> None:
    ctx.memory["n"] = event.n


class ApprovalRequested(Event, type="test.gateway.approval"):
    item: str


@actor(on=ApprovalRequested)
def await_approval(event: ApprovalRequested, ctx: Context) -> None:
    decision = ctx.wait_for("approve", timeout="5m")
    ctx.memory["approved_by"] = decision.get("by")


class Flaky(Event, type="test.gateway.flaky"):
    pass


@actor(on=Flaky, retries=0)
def flaky(event: Flaky, ctx: Context) -> None:
    if FAILING["on"]:
        raise RuntimeError("failing on purpose")
    ctx.memory["ok"] = True
