"""Run-level state changes on the real store: failure with and without retry, in-place replay,
cancellation, signals and timers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from store import (
    ClaimedStep,
    InvalidState,
    NewEvent,
    NotFound,
    Route,
    Store,
    cancel_run,
    claim_step,
    commit_step,
    create_run,
    fail_step,
    fire_due_timers,
    park_step,
    replay_failed_steps,
    run_status,
    send_signal,
)
from store._errors import SignalAmbiguous
from store._tables import events, outbox, runs, step_attempts, steps, waits

LEASE = 2.0
ROUTES = {
    # Two actors on one trigger: one that works, one that fails.
    "t_runs.start": [
        Route("t_runs.good", "default", max_retries=0),
        Route("t_runs.bad", "default", max_retries=2),
    ],
    "t_runs.next": [Route("t_runs.after", "default", max_retries=0)],
}


def router(event_type: str) -> Sequence[Route]:
    return ROUTES.get(event_type, [])


def start(store: Store) -> tuple[str, dict[str, str]]:
    """A new run; returns its id and its first steps' ids by actor."""
    created = create_run(store, NewEvent("t_runs.start", {}), router)
    return created.run_id, {p.actor: p.step_id for p in created.publish}


def claim(
    store: Store, step: str, owner: str = "worker-a", now: float | None = None
) -> ClaimedStep:
    claimed = claim_step(store, step, owner, LEASE, now=now)
    assert claimed.outcome == "claimed", claimed
    assert claimed.step is not None
    return claimed.step


def commit(store: Store, step: ClaimedStep, *emitted: NewEvent, owner: str = "worker-a") -> Any:
    return commit_step(
        store, step, owner, emitted=list(emitted), fan_out=False, memory_writes={}, router=router
    )


def fail(store: Store, step: ClaimedStep, retry_in_ms: int | None) -> Any:
    return fail_step(
        store,
        step,
        "worker-a",
        error_type="PaymentDown",
        error_message="the payment API is down",
        traceback="Traceback (most recent call last):\n  ...\nPaymentDown: the payment API is down",
        retry_in_ms=retry_in_ms,
    )


def row(store: Store, table: Any, *where: Any) -> Any:
    with store.read() as connection:
        return connection.execute(select(table).where(*where)).one()


def rows(store: Store, table: Any, *where: Any) -> list[Any]:
    with store.read() as connection:
        return list(connection.execute(select(table).where(*where)).all())


def lifecycle(store: Store, run_id: str, type: str) -> list[Any]:
    return rows(store, events, events.c.run_id == run_id, events.c.type == type)


def test_a_failed_attempt_with_retries_left_schedules_a_delayed_outbox_row(store: Store) -> None:
    # Given a claimed step with retries left
    run_id, first = start(store)
    step = claim(store, first["t_runs.bad"])
    assert step.attempts_left == 2
    # When its attempt fails with a retry in 5 s
    before = time.time()
    retry = fail(store, step, retry_in_ms=5_000)
    # Then one delayed message is in the outbox, and the step is pending until then
    assert [(p.step_id, p.delay_ms) for p in retry] == [(step.id, 5_000)]
    queued = row(store, outbox, outbox.c.message_id == retry[0].message_id)
    assert queued.delay_ms == 5_000 and queued.step_id == step.id
    pending = row(store, steps, steps.c.id == step.id)
    assert pending.state == "pending" and pending.lease_owner is None
    assert pending.available_at >= before + 5 and pending.error_type == "PaymentDown"
    assert row(store, step_attempts, step_attempts.c.step_id == step.id).outcome == "failed"
    assert run_status(store, run_id) == "running"
    # And a delivery that comes too early is told to come back, without running it
    early = claim_step(store, step.id, "worker-b", LEASE)
    assert early.outcome == "early" and 3_000 < early.available_in_ms <= 5_000
    # And on time it is attempt 2 with one retry fewer
    again = claim(store, step.id, "worker-b", now=pending.available_at)
    assert (again.attempt, again.attempts_left) == (2, 1)


def test_a_final_failure_fails_step_and_run_with_the_error_and_a_run_failed_event(
    store: Store,
) -> None:
    # Given a claimed step
    run_id, first = start(store)
    step = claim(store, first["t_runs.bad"])
    outbox_before = rows(store, outbox, outbox.c.step_id == step.id)
    # When it fails with no retry left
    assert fail(store, step, retry_in_ms=None) == []
    # Then the step is failed with the error, the attempt keeps the traceback
    failed = row(store, steps, steps.c.id == step.id)
    assert (failed.state, failed.error_type, failed.error_message) == (
        "failed",
        "PaymentDown",
        "the payment API is down",
    )
    attempt = row(store, step_attempts, step_attempts.c.step_id == step.id)
    assert attempt.outcome == "failed" and "PaymentDown" in attempt.traceback
    # And the run is failed, saying which step failed and why
    run = row(store, runs, runs.c.id == run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert "t_runs.bad" in run.error and "PaymentDown: the payment API is down" in run.error
    # And its log has a baton.run.failed event naming the step and the error
    [event] = lifecycle(store, run_id, "baton.run.failed")
    assert event.data == {
        "step_id": step.id,
        "actor": "t_runs.bad",
        "error_type": "PaymentDown",
        "message": "the payment API is down",
    }
    # And no message was scheduled for it
    assert rows(store, outbox, outbox.c.step_id == step.id) == outbox_before


def test_replay_resets_only_the_failed_steps_with_a_fresh_retry_budget(store: Store) -> None:
    # Given a failed run: one step succeeded (and caused another), one failed for good
    run_id, first = start(store)
    good = claim(store, first["t_runs.good"])
    [after] = commit(store, good, NewEvent("t_runs.next", {}))
    commit(store, claim(store, after.step_id))
    bad = claim(store, first["t_runs.bad"])
    fail(store, bad, retry_in_ms=None)
    assert run_status(store, run_id) == "failed"
    # When the run's failed steps are replayed
    publish = replay_failed_steps(store, run_id, reason="payment API restored")
    # Then only the failed step is pending again, with a message in the outbox
    assert [p.step_id for p in publish] == [bad.id]
    assert row(store, outbox, outbox.c.message_id == publish[0].message_id).step_id == bad.id
    states = {r.id: (r.state, r.attempts) for r in rows(store, steps, steps.c.run_id == run_id)}
    assert states == {
        good.id: ("succeeded", 1),
        after.step_id: ("succeeded", 1),
        bad.id: ("pending", 1),
    }
    # And the run is running again, with the reason in its log
    assert row(store, runs, runs.c.id == run_id).error is None
    assert run_status(store, run_id) == "running"
    [replayed] = lifecycle(store, run_id, "baton.run.replayed")
    assert replayed.data == {"reason": "payment API restored", "steps": [bad.id]}
    # And the replayed step keeps its id with a fresh retry budget, and can finish the run
    again = claim(store, bad.id)
    assert (again.id, again.attempt, again.attempts_left) == (bad.id, 2, 2)
    commit(store, again)
    assert run_status(store, run_id) == "succeeded"


def test_replay_sends_the_steps_held_back_by_the_failure_without_consent_or_a_fresh_budget(
    store: Store,
) -> None:
    # Given a run whose one step failed for good while another was waiting to be retried
    # (its first attempt failed; a tool it calls may have been reached)
    run_id, first = start(store)
    waiting = claim(store, first["t_runs.bad"])
    fail(store, waiting, retry_in_ms=60_000)
    due = row(store, steps, steps.c.id == waiting.id).available_at
    fail(store, claim(store, first["t_runs.good"]), retry_in_ms=None)
    assert run_status(store, run_id) == "failed"

    # When the operator replays the failed step
    publish = replay_failed_steps(store, run_id, reason="fixed", step_id=first["t_runs.good"])

    # Then the held-back step is sent again too
    assert {p.step_id for p in publish} == {first["t_runs.good"], waiting.id}
    # And it goes on with the backoff and the retries it had left, and the replay is not the
    # operator's word that its earlier attempt's outside call may be made again
    # (attempt_base): only the replayed step gets that, and a fresh budget
    assert row(store, steps, steps.c.id == waiting.id).available_at == due
    assert claim_step(store, waiting.id, "worker-a", LEASE).outcome == "early"
    again = claim(store, waiting.id, now=due + 1)
    assert (again.attempt, again.attempts_left, again.attempt_base) == (2, 1, 0)
    replayed = claim(store, first["t_runs.good"])
    assert (replayed.attempt, replayed.attempts_left, replayed.attempt_base) == (2, 0, 1)


def test_replay_of_a_run_that_did_not_fail_or_does_not_exist_is_refused(store: Store) -> None:
    # Given a running run
    run_id, _ = start(store)
    # Then replaying it is refused, saying why, and an unknown run is not found
    with pytest.raises(InvalidState, match="running"):
        replay_failed_steps(store, run_id, reason="why not")
    with pytest.raises(NotFound, match="no run 'nope'"):
        replay_failed_steps(store, "nope", reason="why not")


def test_cancel_stops_pending_steps_and_drops_the_in_flight_result(store: Store) -> None:
    # Given a run with one step in flight and one pending
    run_id, first = start(store)
    in_flight = claim(store, first["t_runs.good"])
    pending = first["t_runs.bad"]
    # When the run is canceled
    assert cancel_run(store, run_id, reason="customer withdrew") == "canceled"
    # Then the run is canceled with the reason, and the pending step will not run
    run = row(store, runs, runs.c.id == run_id)
    assert run.status == "canceled" and "customer withdrew" in run.error
    assert row(store, steps, steps.c.id == pending).state == "canceled"
    assert claim_step(store, pending, "worker-b", LEASE).outcome == "canceled"
    [canceled] = lifecycle(store, run_id, "baton.run.canceled")
    assert canceled.data == {"reason": "customer withdrew"}
    # And the in-flight step's result is not committed: no events, no messages
    assert commit(store, in_flight, NewEvent("t_runs.next", {})) == []
    assert row(store, steps, steps.c.id == in_flight.id).state == "canceled"
    assert rows(store, events, events.c.cause_step_id == in_flight.id) == []
    attempt = row(store, step_attempts, step_attempts.c.step_id == in_flight.id)
    assert attempt.outcome == "canceled"
    assert run_status(store, run_id) == "canceled"
    # And canceling again is refused
    with pytest.raises(InvalidState, match="already canceled"):
        cancel_run(store, run_id, reason="twice")


def test_a_signal_resumes_the_waiting_step_and_a_wrong_name_lists_the_open_waits(
    store: Store,
) -> None:
    # Given a run whose step waits for "approve" (the other step is done)
    run_id, first = start(store)
    commit(store, claim(store, first["t_runs.good"]))
    waiting = claim(store, first["t_runs.bad"])
    park_step(store, waiting, "worker-a", wait_names=["approve"], deadline=None)
    assert run_status(store, run_id) == "waiting"
    # When a signal with another name is sent
    with pytest.raises(NotFound) as refused:
        send_signal(store, run_id, "aprove", {"by": "ops"})
    # Then the error names the open waits, and nothing changed
    assert "'aprove'" in str(refused.value) and "open waits: approve" in str(refused.value)
    assert row(store, waits, waits.c.run_id == run_id).state == "open"
    # When the right signal is sent
    publish = send_signal(store, run_id, "approve", {"by": "ops"})
    # Then the waiting step is pending again with a message, carrying the signal's data
    assert [p.step_id for p in publish] == [waiting.id]
    wait = row(store, waits, waits.c.run_id == run_id)
    assert (wait.state, wait.data) == ("satisfied", {"by": "ops"})
    assert row(store, steps, steps.c.id == waiting.id).state == "pending"
    assert run_status(store, run_id) == "running"
    [signal] = lifecycle(store, run_id, "baton.signal")
    assert signal.data == {"name": "approve", "data": {"by": "ops"}, "timed_out": False}
    # And a signal to a run that does not exist is not found
    with pytest.raises(NotFound, match="no run 'nope'"):
        send_signal(store, "nope", "approve", {})


def test_a_signal_that_several_steps_wait_for_must_name_one_of_them_or_all(
    store: Store,
) -> None:
    # Given a run with two steps waiting for "approve" (two calls that need approval)
    run_id, first = start(store)
    one = claim(store, first["t_runs.good"])
    other = claim(store, first["t_runs.bad"])
    for step in (one, other):
        park_step(store, step, "worker-a", wait_names=["approve"], deadline=None)

    # When "approve" is sent naming neither
    # Then it is refused with both steps listed, and nothing changed
    with pytest.raises(SignalAmbiguous) as refused:
        send_signal(store, run_id, "approve", {})
    assert f"{one.id} (t_runs.good)" in str(refused.value)
    assert f"{other.id} (t_runs.bad)" in str(refused.value)
    assert "--step STEP" in str(refused.value) and "--all" in str(refused.value)
    assert {w.state for w in rows(store, waits, waits.c.run_id == run_id)} == {"open"}

    # When it names a step that does not wait, or only the start they share
    # Then it is refused too
    with pytest.raises(NotFound, match="is not one of"):
        send_signal(store, run_id, "approve", {}, step="nope")
    with pytest.raises(NotFound, match="is ambiguous among"):
        send_signal(store, run_id, "approve", {}, step=one.id[:1])

    # When it names one step by the end of its id
    publish = send_signal(store, run_id, "approve", {}, step=other.id[-8:])
    # Then only that step resumes
    assert [p.step_id for p in publish] == [other.id]
    states = {w.step_id: w.state for w in rows(store, waits, waits.c.run_id == run_id)}
    assert states == {one.id: "open", other.id: "satisfied"}

    # And in another such run, a signal sent to all resumes both
    run_id, first = start(store)
    both = [claim(store, first["t_runs.good"]), claim(store, first["t_runs.bad"])]
    for step in both:
        park_step(store, step, "worker-a", wait_names=["approve"], deadline=None)
    publish = send_signal(store, run_id, "approve", {}, every=True)
    assert sorted(p.step_id for p in publish) == sorted(s.id for s in both)


def test_a_step_that_parks_uses_up_none_of_its_retries(store: Store) -> None:
    # Given a step allowed two retries, which waits for three signals one after another
    run_id, first = start(store)
    step_id = first["t_runs.bad"]
    for number in range(3):
        step = claim(store, step_id)
        # Then each attempt after a wait still has both retries
        assert step.attempts_left == 2
        park_step(store, step, "worker-a", wait_names=[f"go-{number}"], deadline=None)
        send_signal(store, run_id, f"go-{number}", {})

    # When its fourth attempt fails
    step = claim(store, step_id)
    assert (step.attempt, step.attempts_left) == (4, 2)
    fail(store, step, retry_in_ms=1)

    # Then it is retried, as its first failure
    assert row(store, steps, steps.c.id == step_id).state == "pending"
    assert claim(store, step_id, now=time.time() + 1).attempts_left == 1


def test_a_due_timer_times_out_its_wait_and_resumes_the_step(store: Store) -> None:
    # Given a step parked until a deadline that has passed, and one parked without deadline
    run_id, first = start(store)
    timed = claim(store, first["t_runs.good"])
    park_step(store, timed, "worker-a", wait_names=["timer:sleep"], deadline=time.time() - 1)
    forever = claim(store, first["t_runs.bad"])
    park_step(store, forever, "worker-a", wait_names=["approve"], deadline=None)
    # When timers are fired
    publish = fire_due_timers(store)
    # Then only the due wait timed out and its step is pending again
    assert [p.step_id for p in publish] == [timed.id]
    states = {w.name: w.state for w in rows(store, waits, waits.c.run_id == run_id)}
    assert states == {"timer:sleep": "timed_out", "approve": "open"}
    assert row(store, steps, steps.c.id == timed.id).state == "pending"
    # And firing again finds nothing
    assert fire_due_timers(store) == []


def test_a_run_is_counted_once_in_its_status(store: Store) -> None:
    # A run whose every step succeeded is succeeded, with exactly one succeeded event
    run_id, first = start(store)
    for step in first.values():
        commit(store, claim(store, step))
    assert run_status(store, run_id) == "succeeded"
    with store.read() as connection:
        succeeded = connection.execute(
            select(func.count())
            .select_from(events)
            .where(events.c.run_id == run_id, events.c.type == "baton.run.succeeded")
        ).scalar_one()
    assert succeeded == 1
