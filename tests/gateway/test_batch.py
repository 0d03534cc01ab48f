"""Group commit gives each request what store.create_run would: same rows, same dedupe."""

from __future__ import annotations

from gateway._batch import RunRequest, create_runs
from store import NewEvent, Store, create_run, run_detail, run_status
from tests.gateway.conftest import count
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
