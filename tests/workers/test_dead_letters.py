"""Malformed queue messages are dead-lettered with their raw bytes, once, and never block or
break other runs (DESIGN invariant 10)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import redis
from sqlalchemy import select

from store import Store
from store._tables import dead_letters
from tests.actors import effects
from tests.actors.chaos import ChaosStep, chaos_step
from tests.conftest import wait_for_run
from workers import Runtime
from workers._broker import NAMESPACE

MODULE = "tests.actors.chaos"
QUEUE = chaos_step.options.queue


def push_raw(client: redis.Redis, raw: bytes) -> str:
    """Put bytes on the actor's queue exactly as Dramatiq's enqueue script lays a message out."""
    message_id = str(uuid.uuid4())
    client.hset(f"{NAMESPACE}:{QUEUE}.msgs", message_id, raw)
    client.rpush(f"{NAMESPACE}:{QUEUE}", message_id)
    return message_id


def well_formed(actor_name: str, args: tuple[Any, ...]) -> tuple[str, bytes]:
    """A message Dramatiq itself could have sent, with the given actor and arguments."""
    message_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=QUEUE,
        actor_name=actor_name,
        args=args,
        kwargs={},
        options={"redis_message_id": message_id},
    )
    return message_id, message.encode()


def read_dead_letters(store: Store) -> list[Any]:
    with store.read() as connection:
        return list(connection.execute(select(dead_letters).order_by(dead_letters.c.id)).all())


def test_malformed_messages_are_dead_lettered_with_their_raw_bytes_and_other_runs_complete(
    store: Store,
    redis_url: str,
    make_runtime: Callable[..., Runtime],
    worker_processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # Given, on an actor's queue: bytes that are not a message, JSON that is not a message,
    # a well-formed message whose arguments are wrong, one naming a step the store does not
    # have, and one for an actor no worker has
    client = redis.Redis.from_url(redis_url)
    garbage = b"\x00\xff\xfe not a message {"
    not_a_message = b'{"hello": "world"}'
    wrong_args_id, wrong_args = well_formed(chaos_step.options.name, (1, 2))
    no_step_id, no_step = well_formed(chaos_step.options.name, ("0" * 32, "0" * 32, "00-x-y-01"))
    no_actor_id, no_actor = well_formed("t_dead.no_such_actor", ("a", "b", "c"))
    push_raw(client, garbage)
    push_raw(client, not_a_message)
    for message_id, raw in [
        (wrong_args_id, wrong_args),
        (no_step_id, no_step),
        (no_actor_id, no_actor),
    ]:
        client.hset(f"{NAMESPACE}:{QUEUE}.msgs", message_id, raw)
        client.rpush(f"{NAMESPACE}:{QUEUE}", message_id)
    # And good runs started behind them
    ledger = effects.create(tmp_path / "effects.db")
    runtime = make_runtime()
    run_ids = [
        runtime.start_run(ChaosStep(effects=ledger, steps=3, pause=0.0)).run_id for _ in range(3)
    ]
    # When a worker consumes the queue
    worker_processes(MODULE)
    # Then the good runs complete
    for run_id in run_ids:
        assert wait_for_run(store, run_id, timeout=30) == "succeeded"
    # And each bad message is in the dead letters once, with its raw bytes and the reason
    deadline = time.monotonic() + 10
    while len(read_dead_letters(store)) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    letters = read_dead_letters(store)
    by_raw = {bytes(letter.raw): letter for letter in letters}
    assert len(letters) == 5, [(bytes(x.raw)[:60], x.reason) for x in letters]
    assert "undecodable" in by_raw[garbage].reason
    assert "undecodable" in by_raw[not_a_message].reason
    assert all(letter.queue == QUEUE for letter in letters)
    decoded = {
        json.loads(raw)["message_id"]: letter
        for raw, letter in by_raw.items()
        if raw not in (garbage, not_a_message)
    }
    assert "malformed arguments" in decoded[json.loads(wrong_args)["message_id"]].reason
    assert "no step" in decoded[json.loads(no_step)["message_id"]].reason
    assert "t_dead.no_such_actor" in decoded[json.loads(no_actor)["message_id"]].reason
    # And none of them is still queued or comes back
    assert client.llen(f"{NAMESPACE}:{QUEUE}") == 0
    time.sleep(1.0)
    assert len(read_dead_letters(store)) == 5
    # And the good runs' steps each ran once
    assert sum(effects.calls_per_label(ledger).values()) == 9
