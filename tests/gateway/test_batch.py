"""Group commit gives each request what store.create_run would: same rows, same dedupe; and
deliveries in flight together share commits without losing or doubling a run."""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy import text

from gateway._batch import RunRequest, create_runs
from store import NewEvent, Store, create_run, run_detail, run_status
from tests.gateway.conftest import Gateway, count, standard_body, standard_headers
from workers import Runtime


def test_a_batch_creates_what_create_run_would_and_dedupes_within_itself(
    store: Store, redis_url: str
) -> None:
    # Given a run already started under key "k0"
    runtime = Runtime(store, redis_url)
    pinged = NewEvent("test.gateway.pinged", {"n": 1})
    first = create_run(store, pinged, runtime.route, dedupe_key="k0")
    # When one batch asks for: k0 again, k1 twice, one without a key, one nobody subscribes to
    created = create_runs(
        store,
        [
            RunRequest(pinged, "k0"),
            RunRequest(pinged, "k1"),
            RunRequest(pinged, "k1"),
            RunRequest(pinged),
            RunRequest(NewEvent("test.gateway.noted", {"repo": "r", "number": 1}), "k2"),
        ],
        runtime.route,
    )
    # Then k0 answers with the first run, k1 makes one run for both, the rest one each
    assert [c.created for c in created] == [False, True, False, True, True]
    assert created[0].run_id == first.run_id
    assert created[1].run_id == created[2].run_id
    assert count(store, "runs") == 4
    # And each new run is what create_run makes: trigger, step, outbox row; or, with no
    # subscriber, a run with nothing to do that has already succeeded
    for new in (created[1], created[3]):
        detail = run_detail(store, new.run_id)
        assert [e["type"] for e in detail["events"]] == ["test.gateway.pinged"]
        assert [s["state"] for s in detail["steps"]] == ["pending"]
        assert [p.step_id for p in new.publish] == [detail["steps"][0]["id"]]
        assert run_status(store, new.run_id) == "running"
    assert created[4].subscribed is False and created[4].publish == []
    assert run_status(store, created[4].run_id) == "succeeded"
    assert count(store, "outbox") == 3  # k0's first run and the two new pinged runs


def test_concurrent_deliveries_share_commits_and_each_makes_exactly_one_run(
    gateway: Gateway, store: Store
) -> None:
    # Given 60 distinct deliveries, each of which will arrive twice at the same moment
    deliveries = [standard_body("test.gateway.pinged", {"n": n}) for n in range(60)]
    signed = [(body, standard_headers(body)) for body in deliveries]

    # When all 120 requests are in flight together (no worker runs: the runs stay pending)
    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=120)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as client:
            sends = [
                client.post("/webhooks/standard", content=body, headers=headers)
                for body, headers in signed
                for _ in range(2)
            ]
            return list(await asyncio.gather(*sends))

    answers = asyncio.run(send_all())
    # Then each delivery was accepted once and answered as a duplicate once, with one run id
    for first, second in zip(answers[::2], answers[1::2], strict=True):
        assert {first.status_code, second.status_code} == {200, 202}, (first.text, second.text)
        assert first.json()["run_id"] == second.json()["run_id"]
    # And the store holds exactly one run per delivery, each with its trigger, step and
    # outbox row (or the message already confirmed sent)
    assert count(store, "runs") == 60
    assert count(store, "steps") == 60
    with store.read() as connection:
        triggers = connection.execute(
            text("SELECT COUNT(*) FROM events WHERE type = 'test.gateway.pinged'")
        ).scalar()
        # Runs committed together share their commit's clock: fewer commits than runs.
        commits = connection.execute(text("SELECT COUNT(DISTINCT created_at) FROM runs")).scalar()
    assert triggers == 60
    assert commits is not None and commits < 60
    # And every run's message reaches Redis after its commit, and its outbox row then goes
    with store.read() as connection:
        messages = connection.execute(text("SELECT queue, message_id FROM steps")).all()
    deadline = time.monotonic() + 10
    while count(store, "outbox") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(store, "outbox") == 0
    for queue in {queue for queue, _ in messages}:
        ids = [message_id for name, message_id in messages if name == queue]
        assert all(gateway.runtime.broker.message_exists(queue, ids))
