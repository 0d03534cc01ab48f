"""The run API over HTTP: bearer token, start, find, inspect, replay, cancel, signal."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from store import (
    NewEvent,
    Route,
    Store,
    claim_step,
    create_run,
    park_step,
    read_memory,
    run_detail,
    short_id,
)
from tests.conftest import wait_for_run
from tests.gateway import actors
from tests.gateway.conftest import TOKEN, Gateway, config, count
from workers import Worker

ROUTES = [
    ("POST", "/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/0123456789"),
    ("POST", "/runs/0123456789/replay"),
    ("POST", "/runs/0123456789/cancel"),
    ("POST", "/runs/0123456789/signals/approve"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_needs_the_token(gateway: Gateway, method: str, path: str) -> None:
    # Without a token, with a wrong one, and with a malformed header: 401, JSON, and a hint
    for token in (None, "wrong-token"):
        with gateway.client(token=token) as client:
            answer = client.request(method, path, json={"type": "chain.start", "reason": "x"})
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"] == "unauthorized"
        assert "BATON_API_TOKEN" in answer.json()["detail"]
    with gateway.client(token=None, headers={"Authorization": f"Basic {TOKEN}"}) as client:
        assert client.request(method, path).status_code == 401


def test_a_gateway_without_a_token_keeps_its_api_closed(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway(config(api_token=None))
    with gateway.client(token="anything") as client:
        answer = client.get("/runs")
    assert answer.status_code == 401
    assert "set BATON_API_TOKEN" in answer.json()["detail"]


def test_health_needs_no_token(gateway: Gateway) -> None:
    with gateway.client(token=None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_is_503_when_redis_is_away(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(redis="redis://127.0.0.1:1/0")
    with gateway.client(token=None) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "Redis" in answer.json()["detail"]


def test_start_a_run_then_find_it_and_show_it(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker
    start_worker()
    with gateway.client() as client:
        # When a run is started through the API
        started = client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": 1}})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        assert started.json() == {"run_id": run_id, "created": True, "subscribed": True}
        assert wait_for_run(store, run_id) == "succeeded"
        # Then it is listed, filtered by status and event type
        listed = client.get(
            "/runs", params={"status": "succeeded", "event_type": "test.gateway.pinged"}
        )
        assert [r["id"] for r in listed.json()["runs"]] == [run_id]
        assert client.get("/runs", params={"status": "failed"}).json()["runs"] == []
        assert client.get("/runs", params={"since": "1h"}).json()["runs"][0]["id"] == run_id
        assert client.get("/runs", params={"since": "2999-01-01T00:00:00Z"}).json()["runs"] == []
        # And shown whole by id, by its start, or by its end (as listings show ids)
        assert client.get(f"/runs/{short_id(run_id)}").json()["run"]["id"] == run_id
        shown = client.get(f"/runs/{run_id[:16]}")
        assert shown.status_code == 200, shown.text
        detail = shown.json()
        assert detail["run"]["id"] == run_id and detail["run"]["status"] == "succeeded"
        assert detail["events"][0]["type"] == "test.gateway.pinged"
        assert detail["steps"][0]["attempt_history"][0]["outcome"] == "succeeded"
        assert detail["usage"]["model_calls"] == 0
        assert set(detail) >= {"run", "events", "steps", "waits", "memory", "usage"}


def test_runs_are_paged_with_a_cursor(gateway: Gateway) -> None:
    with gateway.client() as client:
        started = [
            client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": n}}).json()[
                "run_id"
            ]
            for n in range(5)
        ]
        seen, cursor = [], None
        while True:
            page = client.get(
                "/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            )
            seen += [r["id"] for r in page.json()["runs"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
    assert seen == sorted(started, reverse=True)


def test_an_idempotency_key_starts_one_run(gateway: Gateway, store: Store) -> None:
    with gateway.client(headers={"Idempotency-Key": "order-17"}) as client:
        first = client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": 1}})
        again = client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": 1}})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["run_id"] == again.json()["run_id"]
    assert again.json()["created"] is False
    assert count(store, "runs") == 1


def test_bad_run_requests_say_which_field(gateway: Gateway, store: Store) -> None:
    with gateway.client() as client:
        unknown = client.post("/runs", json={"type": "nobody.knows", "data": {}})
        invalid = client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": "x"}})
        missing = client.post("/runs", json={"data": {}})
        since = client.get("/runs", params={"since": "yesterday"})
        absent = client.get("/runs/ffffffffffff")
    assert unknown.status_code == 422 and "registered types" in unknown.json()["detail"]
    assert invalid.status_code == 422 and invalid.json()["detail"].count("n:") == 1
    assert missing.status_code == 422 and "body.type" in missing.json()["detail"]
    assert since.status_code == 422 and "query.since" in since.json()["detail"]
    assert absent.status_code == 404 and absent.json()["error"] == "not_found"
    assert count(store, "runs") == 0


def test_an_approval_arrives_through_the_signals_route(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a run waiting for the signal "approve"
    start_worker()
    with gateway.client() as client:
        run_id = client.post(
            "/runs", json={"type": "test.gateway.approval", "data": {"item": "deploy"}}
        ).json()["run_id"]
        assert wait_for_run(store, run_id, until=frozenset({"waiting"})) == "waiting"
        # When a signal of another name comes, it is refused and says which waits are open
        wrong = client.post(f"/runs/{run_id}/signals/reject", json={})
        assert wrong.status_code == 409 and "approve" in wrong.json()["detail"]
        # When the approval comes with data
        answer = client.post(f"/runs/{run_id}/signals/approve", json={"by": "ops@example.com"})
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"run_id": run_id, "name": "approve", "resumed_steps": 1}
        # Then the run resumes with it and completes
        assert wait_for_run(store, run_id) == "succeeded"
        assert read_memory(store, run_id, "approved_by") == (True, "ops@example.com")
        # And a late repeat of the callback is a conflict, not a crash
        assert client.post(f"/runs/{run_id}/signals/approve", json={}).status_code == 409


def test_a_signal_several_steps_wait_for_names_one_or_all(gateway: Gateway, store: Store) -> None:
    # Given a run with two steps waiting for "approve"
    routes = [Route("t_api.first", "default", 0), Route("t_api.second", "default", 0)]
    created = create_run(store, NewEvent("t_api.two_approvals", {}), lambda _type: routes)
    waiting = []
    for publish in created.publish:
        claimed = claim_step(store, publish.step_id, "worker-a", 30.0).step
        assert claimed is not None
        park_step(store, claimed, "worker-a", wait_names=["approve"], deadline=None)
        waiting.append(claimed.id)
    signals = f"/runs/{created.run_id}/signals/approve"
    with gateway.client() as client:
        # When an approval names neither, it is a conflict that lists both steps
        vague = client.post(signals, json={})
        assert vague.status_code == 409 and vague.json()["error"] == "ambiguous_signal"
        assert all(step in vague.json()["detail"] for step in waiting)
        # When it names one step and all at once, the request is invalid
        both = client.post(signals, params={"step": waiting[0], "all": "true"}, json={})
        assert both.status_code == 422
        # When it names one step by the end of its id, that step alone resumes
        named = client.post(signals, params={"step": waiting[1][-8:]}, json={})
        assert named.status_code == 202, named.text
        assert named.json()["resumed_steps"] == 1
    states = {s["id"]: s["state"] for s in run_detail(store, created.run_id)["steps"]}
    assert states == {waiting[0]: "waiting", waiting[1]: "pending"}


def test_replay_a_failed_run_after_the_fix(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a run that failed
    start_worker()
    actors.FAILING["on"] = True
    try:
        with gateway.client() as client:
            run_id = client.post("/runs", json={"type": "test.gateway.flaky"}).json()["run_id"]
            assert wait_for_run(store, run_id) == "failed"
            # A replay needs a reason
            assert client.post(f"/runs/{run_id}/replay", json={"reason": " "}).status_code == 422
            assert client.post(f"/runs/{run_id}/replay", json={}).status_code == 422
            # When the cause is fixed and the run is replayed with a reason
            actors.FAILING["on"] = False
            answer = client.post(f"/runs/{run_id}/replay", json={"reason": "fixed the flake"})
            assert answer.status_code == 202, answer.text
            assert len(answer.json()["replayed_steps"]) == 1
            # Then it succeeds, and replaying a succeeded run is a conflict
            assert wait_for_run(store, run_id) == "succeeded"
            again = client.post(f"/runs/{run_id}/replay", json={"reason": "again"})
            assert again.status_code == 409 and again.json()["error"] == "conflict"
    finally:
        actors.FAILING["on"] = False


def test_cancel_a_waiting_run(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    with gateway.client() as client:
        run_id = client.post(
            "/runs", json={"type": "test.gateway.approval", "data": {"item": "x"}}
        ).json()["run_id"]
        wait_for_run(store, run_id, until=frozenset({"waiting"}))
        assert client.post(f"/runs/{run_id}/cancel", json={}).status_code == 422
        answer = client.post(f"/runs/{run_id}/cancel", json={"reason": "not needed"})
        assert answer.json() == {"run_id": run_id, "status": "canceled"}
        assert client.get(f"/runs/{run_id}").json()["run"]["status"] == "canceled"
        assert client.post(f"/runs/{run_id}/cancel", json={"reason": "twice"}).status_code == 409


def test_metrics_count_runs_deliveries_and_latency(gateway: Gateway) -> None:
    with gateway.client() as client:
        client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": 1}})
        client.post("/webhooks/github", content=b"{}")  # unsigned: refused
        time.sleep(0.05)
        text = client.get("/metrics").text
    assert 'baton_runs{status="running"} 1.0' in text
    assert 'baton_runs{status="failed"} 0.0' in text
    assert 'baton_webhook_deliveries_total{outcome="missing_signature",source="github"} 1.0' in text
    assert (
        'baton_http_request_duration_seconds_count{method="POST",route="/runs",status="202"} 1.0'
        in text
    )
    assert 'route="/webhooks/{source}"' in text
