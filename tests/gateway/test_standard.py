"""Standard Webhooks deliveries, signed by the standardwebhooks library: id, timestamp,
signature; the event type from the payload's ``type``, the event's data from its ``data``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from store import Store, run_detail
from tests.conftest import wait_for_run
from tests.gateway.conftest import Gateway, nothing_stored, standard_body, standard_headers
from workers import Worker


def test_a_signed_delivery_starts_one_run_that_completes(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker and a delivery signed by the standardwebhooks library
    start_worker()
    body = standard_body("test.gateway.pinged", {"n": 41})
    # When it is delivered
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    # Then it is accepted; the run's trigger carries the data object; the run completes
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]
    assert wait_for_run(store, run_id) == "succeeded"
    events = run_detail(store, run_id)["events"]
    assert events[0]["type"] == "test.gateway.pinged" and events[0]["data"] == {"n": 41}
    assert {"type": "test.gateway.ponged", "data": {"n": 42}} in [
        {"type": e["type"], "data": e["data"]} for e in events
    ]


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ("301 s in the past", 401, "stale_timestamp"),
        ("301 s in the future", 401, "stale_timestamp"),
        ("wrong secret", 401, "bad_signature"),
        ("no webhook-signature", 401, "missing_signature"),
        ("no webhook-id", 401, "missing_signature"),
        ("no webhook-timestamp", 401, "missing_signature"),
        ("garbled signature", 401, "bad_signature"),
        ("re-serialised JSON", 401, "bad_signature"),
        ("id changed after signing", 401, "bad_signature"),
    ],
)
def test_a_refused_delivery_stores_nothing(
    gateway: Gateway, store: Store, change: str, status: int, error: str
) -> None:
    # Given a valid delivery, spoiled in one way
    body = standard_body("test.gateway.pinged", {"n": 1})
    headers = standard_headers(body)
    if change == "301 s in the past":
        headers = standard_headers(body, offset_seconds=-301)
    elif change == "301 s in the future":
        headers = standard_headers(body, offset_seconds=301)
    elif change == "wrong secret":
        headers = standard_headers(body, secret="whsec_" + "QUJD" * 8)
    elif change.startswith("no "):
        del headers[change.removeprefix("no ")]
    elif change == "garbled signature":
        headers["webhook-signature"] = "v1"
    elif change == "re-serialised JSON":
        body = json.dumps(json.loads(body), indent=2).encode()
    elif change == "id changed after signing":
        headers["webhook-id"] = "msg_another"
    # When it is delivered
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=headers)
    # Then it is refused, says why, and nothing is stored
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert nothing_stored(store)


def test_a_payload_without_a_data_object_is_422(gateway: Gateway, store: Store) -> None:
    body = json.dumps({"type": "test.gateway.pinged", "n": 1}).encode()
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("data:")
    assert nothing_stored(store)


def test_a_payload_with_fields_the_class_does_not_declare_is_422(
    gateway: Gateway, store: Store
) -> None:
    # Given the Strict class, which declares only n and keeps Event's extra="forbid"
    body = standard_body("test.gateway.strict", {"n": 1, "surplus": True})
    # When a delivery carries another field
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    # Then it is refused naming the field, and the detail says how to accept such payloads
    assert answer.status_code == 422, answer.text
    assert "surplus" in answer.json()["detail"]
    assert 'extra="ignore"' in answer.json()["detail"]
    assert nothing_stored(store)


def test_a_webhook_cannot_send_batons_own_event_types(gateway: Gateway, store: Store) -> None:
    body = standard_body("baton.signal", {"name": "approve"})
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("type:")
    assert nothing_stored(store)
