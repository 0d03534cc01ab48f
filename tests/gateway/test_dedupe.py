"""Deliveries are processed once: repeats, concurrent or later, get the first run's id."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from store import Store
from tests.conftest import wait_for_run
from tests.gateway.conftest import (
    Gateway,
    count,
    github_fixture,
    github_headers,
    standard_body,
    standard_headers,
)
from workers import Worker


def _send_concurrently(
    url: str, path: str, body: bytes, headers: dict[str, str]
) -> list[httpx.Response]:
    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as client:
            return client.post(path, content=body, headers=headers)

    with ThreadPoolExecutor(max_workers=5) as pool:
        return list(pool.map(send, range(5)))


def test_the_same_github_delivery_five_times_at_once_then_later_makes_one_run(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given one signed delivery
    start_worker()
    body = github_fixture("issue_comment.created")
    headers = github_headers(body, "issue_comment", delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    # When it arrives five times concurrently
    answers = _send_concurrently(gateway.url, "/webhooks/github", body, headers)
    # Then every answer is 2xx with the same run id; one was accepted, the rest are duplicates
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    run_ids = {a.json()["run_id"] for a in answers}
    assert len(run_ids) == 1
    assert sorted(a.json()["status"] for a in answers) == ["accepted"] + ["duplicate"] * 4
    (run_id,) = run_ids
    assert wait_for_run(store, run_id) == "succeeded"
    # And when it arrives again after the run finished, it is still that run, and nothing starts
    with gateway.client(token=None) as client:
        later = client.post("/webhooks/github", content=body, headers=headers)
    assert later.status_code == 200 and later.json() == {
        **later.json(),
        "status": "duplicate",
        "run_id": run_id,
    }
    assert count(store, "runs") == 1
    assert count(store, "steps") == 1
    assert count(store, "outbox") == 0


def test_the_same_standard_delivery_five_times_makes_one_run(
    gateway: Gateway, store: Store
) -> None:
    body = standard_body("test.gateway.pinged", {"n": 1})
    headers = standard_headers(body, message_id="msg_once")
    answers = _send_concurrently(gateway.url, "/webhooks/standard", body, headers)
    assert all(a.status_code in (200, 202) for a in answers)
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert count(store, "runs") == 1


def test_the_same_id_from_two_sources_is_two_deliveries(gateway: Gateway, store: Store) -> None:
    # Delivery ids are unique per source, not across sources.
    github_body = github_fixture("issue_comment.created")
    standard = standard_body("test.gateway.pinged", {"n": 1})
    with gateway.client(token=None) as client:
        first = client.post(
            "/webhooks/github",
            content=github_body,
            headers=github_headers(github_body, "issue_comment", delivery="same-id"),
        )
        second = client.post(
            "/webhooks/standard",
            content=standard,
            headers=standard_headers(standard, message_id="same-id"),
        )
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] != second.json()["run_id"]
    assert count(store, "runs") == 2
