"""The dead-letter list on the real store: failed steps and undecodable messages grouped by
actor and error type, discarded, replayed in place and re-published."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from store import (
    DeadLetterFilter,
    NewEvent,
    NotFound,
    Route,
    Store,
    claim_step,
    confirm_published,
    create_run,
    dead_letter_detail,
    dead_letter_groups,
    dead_letter_items,
    discard_dead_letters,
    fail_step,
    plan_dead_letter_replay,
    record_dead_letter,
    replay_dead_letters,
    requeue_dead_letter,
    run_status,
    short_id,
)
from store._dead_letters import dead_letter_number, names_dead_letter
from store._tables import dead_letters, operations, outbox, steps

ROUTES = {
    "t_data.charge": [Route("t_data.charge", "default", max_retries=0)],
    "t_data.ship": [Route("t_data.ship", "default", max_retries=0)],
}


def router(event_type: str) -> Sequence[Route]:
    return ROUTES.get(event_type, [])


def failed_run(store: Store, event_type: str, error_type: str, message: str) -> tuple[str, str]:
    """A run whose only step failed for good; returns (run id, step id)."""
    created = create_run(store, NewEvent(event_type, {}), router)
    [publish] = created.publish
    claimed = claim_step(store, publish.step_id, "worker-a", 5.0)
    assert claimed.step is not None
    fail_step(
        store,
        claimed.step,
        "worker-a",
        error_type=error_type,
        error_message=message,
        traceback=f"Traceback (most recent call last):\n  ...\n{error_type}: {message}",
        retry_in_ms=None,
    )
    assert run_status(store, created.run_id) == "failed"
    return created.run_id, publish.step_id


def pointer_bytes(step_id: str, run_id: str, actor: str) -> bytes:
    """A message as Dramatiq encodes a step pointer."""
    return json.dumps(
        {
            "queue_name": "default",
            "actor_name": actor,
            "args": [step_id, run_id, "00-ab-cd-01"],
            "kwargs": {},
            "options": {},
            "message_id": "m1",
            "message_timestamp": 1,
        }
    ).encode()


def by_key(groups: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    return {(g["kind"], g["actor"], g["error_type"]): g for g in groups}


def test_failed_steps_and_dead_letters_are_grouped_by_actor_and_error_type(store: Store) -> None:
    # Given two runs whose charge step failed with PaymentDown and one whose ship step timed out
    before = time.time()
    charge_runs = [failed_run(store, "t_data.charge", "PaymentDown", f"down {n}") for n in (1, 2)]
    failed_run(store, "t_data.ship", "TimeLimitExceeded", "too slow")
    # And two messages no worker could take: undecodable bytes, and one for an unknown actor
    record_dead_letter(
        store,
        queue="default",
        raw=b"\xff\xfe garbage",
        reason="undecodable message: 'utf-8' codec can't decode",
    )
    record_dead_letter(
        store,
        queue="default",
        raw=pointer_bytes("s1", "r1", "t_data.gone"),
        reason="nacked: no actor 't_data.gone' in this worker",
    )
    # When the list is read
    groups = by_key(dead_letter_groups(store, DeadLetterFilter()))
    # Then each (kind, actor, error type) is one group with counts and first and last seen
    charge = groups[("step", "t_data.charge", "PaymentDown")]
    assert (charge["count"], charge["runs"], charge["replayable"]) == (2, 2, "yes")
    assert before <= charge["first_seen"] <= charge["last_seen"] <= time.time()
    assert charge["last_error"] == "down 2"
    assert groups[("step", "t_data.ship", "TimeLimitExceeded")]["count"] == 1
    garbage = groups[("message", None, "UndecodableMessage")]
    assert (garbage["count"], garbage["replayable"]) == (1, "no")
    # And a decodable message is grouped under the actor its bytes name
    assert groups[("message", "t_data.gone", "UnknownActor")]["replayable"] == "maybe"
    assert len(groups) == 4
    # And the filters narrow by actor, error type (any case) and time
    only_charge = dead_letter_groups(store, DeadLetterFilter(actor="charge"))
    assert [g["error_type"] for g in only_charge] == ["PaymentDown"]
    assert {g["error_type"] for g in dead_letter_groups(store, DeadLetterFilter(error="time"))} == {
        "TimeLimitExceeded"
    }
    assert dead_letter_groups(store, DeadLetterFilter(since=time.time() + 60)) == []
    # And a group's items are its failed steps, with their runs
    items = dead_letter_items(store, DeadLetterFilter(), [charge["group"]])
    assert sorted((i.run_id, i.id) for i in items) == sorted(charge_runs)


def test_detail_shows_the_last_attempts_traceback_or_the_raw_bytes(store: Store) -> None:
    # Given a failed step and an undecodable message
    _, step_id = failed_run(store, "t_data.charge", "PaymentDown", "the payment API is down")
    record_dead_letter(store, queue="default", raw=b"\x00" * 3000, reason="undecodable message: x")
    [message] = dead_letter_items(store, DeadLetterFilter(error="undecodable"))
    # Then the step shows its last attempt's traceback
    detail = dead_letter_detail(store, step_id)
    assert detail["run_status"] == "failed"
    assert "PaymentDown: the payment API is down" in detail["last_attempt"]["traceback"]
    assert dead_letter_detail(store, short_id(step_id))["id"] == step_id  # as the list shows it
    # And the message shows its bytes' repr, cut after a KiB, and why it cannot be replayed
    shown = dead_letter_detail(store, message.id)
    assert (
        shown["raw_repr"].startswith("b'\\x00\\x00") and "(1,976 more bytes)" in shown["raw_repr"]
    )
    assert shown["raw_size"] == 3000 and shown["pointer"] is None
    assert "not a JSON message" in shown["not_a_pointer"]
    # And an unknown id is not found
    with pytest.raises(NotFound):
        dead_letter_detail(store, "dl-999")
    with pytest.raises(NotFound, match="no dead letter or failed step"):
        dead_letter_items(store, DeadLetterFilter(), ["g-nothing"])


def test_discard_takes_items_off_the_list_until_the_step_fails_again(store: Store) -> None:
    # Given a failed step and an undecodable message on the list
    run_id, step_id = failed_run(store, "t_data.charge", "PaymentDown", "down")
    record_dead_letter(store, queue="default", raw=b"\xff", reason="undecodable message: x")
    items = dead_letter_items(store, DeadLetterFilter())
    assert len(items) == 2
    # When both are discarded
    assert discard_dead_letters(store, items, reason="known outage", actor="t_data") == 2
    # Then the list is empty, the rows stay, and the operation is recorded with its reason
    assert dead_letter_groups(store, DeadLetterFilter()) == []
    with store.read() as connection:
        assert connection.execute(select(dead_letters.c.discarded_at)).scalar() is not None
        operation = connection.execute(select(operations)).one()
    assert (operation.kind, operation.reason, operation.actor) == (
        "dlq_discard",
        "known outage",
        "t_data",
    )
    assert operation.outcome == {"discarded": 2}
    assert sorted(operation.parameters["items"]) == sorted(item.id for item in items)
    # And when the step is replayed and fails again, it is back on the list
    time.sleep(0.01)
    replay_dead_letters(
        store, [i for i in items if i.kind == "step"], reason="retry", actor="t_data"
    )
    claimed = claim_step(store, step_id, "worker-b", 5.0)
    assert claimed.step is not None
    fail_step(
        store,
        claimed.step,
        "worker-b",
        error_type="PaymentDown",
        error_message="again",
        traceback="...",
        retry_in_ms=None,
    )
    [back] = dead_letter_groups(store, DeadLetterFilter())
    assert (back["actor"], back["count"], back["last_error"]) == ("t_data.charge", 1, "again")
    assert run_status(store, run_id) == "failed"


def test_replay_reruns_failed_runs_and_republishes_pointers_to_waiting_steps(store: Store) -> None:
    # Given a failed step, an undecodable message, and a pointer to a step still pending
    # whose message was dead-lettered (published, then refused by a worker without the actor)
    run_id, step_id = failed_run(store, "t_data.charge", "PaymentDown", "down")
    record_dead_letter(store, queue="default", raw=b"\xff", reason="undecodable message: x")
    waiting = create_run(store, NewEvent("t_data.ship", {}), router)
    [lost] = waiting.publish
    confirm_published(store, [lost.message_id])
    record_dead_letter(
        store,
        queue="default",
        raw=pointer_bytes(lost.step_id, lost.run_id, lost.actor),
        reason="nacked: no actor 't_data.ship' in this worker",
    )
    items = dead_letter_items(store, DeadLetterFilter())
    ids = {
        item.kind + ("-garbage" if item.error_type == "UndecodableMessage" else ""): item.id
        for item in items
    }
    # When the replay is planned
    plan = dict(plan_dead_letter_replay(store, items))
    # Then the step and the pointer would run again; the garbage cannot, and says why
    assert plan[ids["step"]] is None and plan[ids["message"]] is None
    assert "not a JSON message" in str(plan[ids["message-garbage"]])
    # When they are replayed
    outcome = replay_dead_letters(store, items, reason="the API is back", actor="t_data")
    # Then the failed run is running again and the pointer has a fresh message in the outbox
    assert sorted(outcome.replayed) == sorted([ids["step"], ids["message"]])
    assert [item_id for item_id, _ in outcome.skipped] == [ids["message-garbage"]]
    assert run_status(store, run_id) == "running"
    assert {p.step_id for p in outcome.publish} == {step_id, lost.step_id}
    republished = next(p for p in outcome.publish if p.step_id == lost.step_id)
    assert republished.message_id != lost.message_id
    with store.read() as connection:
        assert (
            connection.execute(
                select(outbox.c.step_id).where(outbox.c.message_id == republished.message_id)
            ).scalar()
            == lost.step_id
        )
        assert (
            connection.execute(
                select(steps.c.message_id).where(steps.c.id == lost.step_id)
            ).scalar()
            == republished.message_id
        )
    # And only the garbage is left on the list; a second re-publish finds nothing to do
    assert [g["error_type"] for g in dead_letter_groups(store, DeadLetterFilter())] == [
        "UndecodableMessage"
    ]
    assert requeue_dead_letter(store, int(ids["message"].removeprefix("dl-")))[0] is None


def test_a_short_step_id_of_digits_is_not_taken_for_a_dead_letter_number() -> None:
    # The 12 characters of a step id the list shows can be all digits (hex): they name
    # a step; a short number or dl-N names a dead letter; one past the id column is unknown
    assert not names_dead_letter("181510488203")
    assert names_dead_letter("17") and names_dead_letter("dl-181510488203")
    assert dead_letter_number("dl-17") == 17
    with pytest.raises(NotFound, match="dl-17"):
        dead_letter_number("dl-181510488203")
