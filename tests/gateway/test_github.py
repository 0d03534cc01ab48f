"""GitHub deliveries: signed with a plain HMAC over the body, typed by header and action."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from store import Store, read_memory, run_detail
from tests.conftest import wait_for_run
from tests.gateway.conftest import (
    Gateway,
    github_fixture,
    github_headers,
    nothing_stored,
)
from workers import Worker


def test_a_signed_delivery_starts_one_run_that_completes(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker, and GitHub's own issue_comment.created payload signed with the secret
    start_worker()
    body = github_fixture("issue_comment.created")
    # When GitHub delivers it
    with gateway.client(token=None) as client:
        answer = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issue_comment")
        )
    # Then it is accepted with a run id, and that run completes
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "accepted"
    assert accepted["event_type"] == "github.issue_comment.created"
    assert wait_for_run(store, accepted["run_id"]) == "succeeded"
    # And the trigger is the app's class: only the fields it declared, read from the payload
    payload = json.loads(body)
    detail = run_detail(store, accepted["run_id"])
    trigger = detail["events"][0]
    assert trigger["type"] == "github.issue_comment.created"
    assert trigger["data"] == {
        "repo": payload["repository"]["full_name"],
        "number": payload["issue"]["number"],
        "comment": payload["comment"]["body"],
    }
    assert "test.gateway.noted" in [e["type"] for e in detail["events"]]
    assert len(detail["steps"]) == 1


def test_the_generic_event_carries_the_whole_payload(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given an actor on webhook_event("github.issues.labeled")
    start_worker()
    body = github_fixture("issues.labeled")
    # When GitHub delivers an issues.labeled payload
    with gateway.client(token=None) as client:
        answer = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issues")
        )
    # Then the run's trigger data is the payload, whole, and the actor read from it
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]
    assert wait_for_run(store, run_id) == "succeeded"
    assert run_detail(store, run_id)["events"][0]["data"] == json.loads(body)
    assert read_memory(store, run_id, "label") == (True, json.loads(body)["label"]["name"])


def test_an_older_secret_still_verifies_while_rotating(gateway: Gateway, store: Store) -> None:
    body = github_fixture("issues.labeled")
    headers = github_headers(body, "issues", secret="an-older-github-secret")
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/github", content=body, headers=headers)
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ("wrong secret", 401, "bad_signature"),
        ("no signature header", 401, "missing_signature"),
        ("not sha256=", 401, "bad_signature"),
        ("re-serialised JSON", 401, "bad_signature"),
        ("no delivery header", 400, "missing_header"),
        ("no event header", 400, "bad_header"),
    ],
)
def test_a_refused_delivery_stores_nothing(
    gateway: Gateway, store: Store, change: str, status: int, error: str
) -> None:
    # Given a valid signed delivery, spoiled in one way
    body = github_fixture("issue_comment.created")
    headers = github_headers(body, "issue_comment")
    if change == "wrong secret":
        headers = github_headers(body, "issue_comment", secret="not-the-secret")
    elif change == "no signature header":
        del headers["X-Hub-Signature-256"]
    elif change == "not sha256=":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].replace("sha256=", "")
    elif change == "re-serialised JSON":
        # Same document, different bytes: the signature was made over the original bytes.
        body = json.dumps(json.loads(body), separators=(",", ":")).encode()
    elif change == "no delivery header":
        del headers["X-GitHub-Delivery"]
    elif change == "no event header":
        del headers["X-GitHub-Event"]
    # When it is delivered
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/github", content=body, headers=headers)
    # Then it is refused with the right status and a JSON error that says what to do
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert answer.json()["detail"]
    # And nothing is stored: no run, no event, no outbox row, no delivery record
    assert nothing_stored(store)


def test_an_invalid_payload_for_the_apps_class_is_422_naming_the_field(
    gateway: Gateway, store: Store
) -> None:
    # Given a comment payload without the number
    payload = json.loads(github_fixture("issue_comment.created"))
    del payload["issue"]["number"]
    body = json.dumps(payload).encode()
    # When it is delivered, correctly signed
    with gateway.client(token=None) as client:
        answer = client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "issue_comment")
        )
    # Then it is refused naming the field, and nothing is stored
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_payload"
    assert "issue.number" in answer.json()["detail"]
    assert nothing_stored(store)


def test_a_type_nobody_subscribes_to_is_recorded_and_ignored(
    gateway: Gateway, store: Store
) -> None:
    # Given a push delivery (no actor subscribes to github.push)
    body = github_fixture("push")
    headers = github_headers(body, "push")
    # When it is delivered twice
    with gateway.client(token=None) as client:
        answers = [client.post("/webhooks/github", content=body, headers=headers) for _ in "12"]
    # Then both are acknowledged as ignored, without a run, and recorded once
    for answer in answers:
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "ignored"
        assert answer.json()["run_id"] is None
        assert "BATON_MODULES" in answer.json()["detail"]
    from tests.gateway.conftest import count

    assert count(store, "runs") == 0
    assert count(store, "deliveries") == 1
