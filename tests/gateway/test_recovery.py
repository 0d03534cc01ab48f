"""Nothing accepted is lost: not when the gateway dies after answering, not when its message
never reaches Redis. The store's outbox carries the run to a worker either way."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway._batch import RunRequest
from gateway._committer import Committer
from store import CreatedRun, NewEvent, Store, run_status
from tests.conftest import FAST, REPO, wait_for_run, wait_until
from tests.gateway.actors import Pinged
from tests.gateway.conftest import (
    GITHUB_SECRET,
    STANDARD_SECRET,
    TOKEN,
    Gateway,
    count,
    standard_body,
    standard_headers,
)
from workers import Runtime, Worker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve_process(
    baton_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Factory: `baton serve --port PORT` as a real process, returned once /healthz answers."""
    started: list[subprocess.Popen[bytes]] = []
    env = {
        **baton_env,
        "BATON_API_TOKEN": TOKEN,
        "BATON_GITHUB_WEBHOOK_SECRETS": f"old-secret,{GITHUB_SECRET}",
        "BATON_STANDARD_WEBHOOK_SECRETS": STANDARD_SECRET,
        "BATON_MODULES": "tests.gateway.actors",
    }

    def spawn(port: int) -> subprocess.Popen[bytes]:
        log = tmp_path / f"gateway-{len(started)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "baton", "serve", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"baton serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    yield spawn
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_a_gateway_killed_after_answering_loses_nothing(
    serve_process: Callable[[int], subprocess.Popen[bytes]],
    worker_processes: Callable[..., Any],
    store: Store,
) -> None:
    # Given `baton serve` and no worker yet
    port = _free_port()
    gateway = serve_process(port)
    body = standard_body("test.gateway.pinged", {"n": 1})
    headers = standard_headers(body, message_id="msg_survives")
    url = f"http://127.0.0.1:{port}/webhooks/standard"
    # When a delivery is accepted and the gateway is SIGKILLed at once
    first = httpx.post(url, content=body, headers=headers)
    assert first.status_code == 202, first.text
    os.killpg(gateway.pid, signal.SIGKILL)
    gateway.wait(timeout=10)
    # And a new gateway receives the same delivery again (the sender retries)
    serve_process(port)
    again = httpx.post(url, content=body, headers=headers)
    assert again.status_code == 200 and again.json()["run_id"] == first.json()["run_id"]
    # Then a worker started afterwards runs it to the end, once
    worker_processes("tests.gateway.actors")
    assert wait_for_run(store, first.json()["run_id"]) == "succeeded"
    assert count(store, "runs") == 1
    # And the API of the new gateway shows it
    shown = httpx.get(
        f"http://127.0.0.1:{port}/runs/{first.json()['run_id']}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert shown.json()["run"]["status"] == "succeeded"


def test_a_message_that_never_reached_redis_is_sent_by_the_outbox_relay(
    start_gateway: Callable[..., Gateway], store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given a gateway whose Redis is unreachable (its publishes fail after the commit)
    gateway = start_gateway(redis="redis://127.0.0.1:1/0")
    body = standard_body("test.gateway.pinged", {"n": 1})
    # When a delivery is accepted
    with gateway.client(token=None) as client:
        answer = client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    assert answer.status_code == 202, answer.text
    # Then its message waits in the store's outbox
    deadline = time.monotonic() + 5
    while count(store, "outbox") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(store, "outbox") == 1
    # And a worker's relay publishes it, and the run completes
    start_worker()
    assert wait_for_run(store, answer.json()["run_id"]) == "succeeded"
    wait_until(lambda: count(store, "outbox") == 0, 10, "the outbox emptying")


def test_while_redis_stalls_messages_past_the_senders_bound_wait_in_the_outbox(
    store: Store, redis_url: str, start_worker: Callable[..., Worker]
) -> None:
    # Given a run writer's committer whose sender keeps at most 2 messages waiting for Redis
    runtime = Runtime(store, redis_url, FAST)
    committer = Committer(runtime, runtime.route)
    committer.sender.max_queued = 2
    committer.start()
    # And Redis holding every write back (for up to 8 s: the broker's socket timeout is 10)
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("CLIENT", "PAUSE", 8000, "WRITE")
    try:
        # When 5 runs are created, one after another
        run_ids = []
        for n in range(5):
            answer: Future[CreatedRun] = Future()
            committer.submit([RunRequest(NewEvent(Pinged.type, {"n": n}), answer=answer)])
            run_ids.append(answer.result(timeout=10).run_id)
        # Then each committed; the sender holds 2 messages, and leaves 3 to the relay
        assert (committer.sender.queued, committer.sender.left_to_relay) == (2, 3)
        assert count(store, "outbox") == 5
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        committer.stop()
    # And once Redis answers, the 2 are sent and the relay sends the 3: every run completes
    start_worker()
    for run_id in run_ids:
        assert wait_for_run(store, run_id) == "succeeded"
    # (An outbox row is deleted just after its message is sent: a run may finish first.)
    wait_until(lambda: count(store, "outbox") == 0, 10, "the outbox emptying")


def test_a_run_writer_killed_mid_flight_is_started_again_and_loses_nothing(
    gateway: Gateway, store: Store
) -> None:
    # Given a gateway, its run writer process, and 300 distinct deliveries
    writer = gateway.app.state.intake.writer
    killed = writer.pid
    assert killed is not None
    deliveries = [standard_body("test.gateway.pinged", {"n": n}) for n in range(300)]
    signed = [(body, standard_headers(body)) for body in deliveries]

    async def deliver_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post("/webhooks/standard", content=body, headers=headers)
                        for body, headers in signed
                    )
                )
            )

    def kill_the_writer_once_runs_commit() -> None:
        deadline = time.monotonic() + 30
        while count(store, "runs") < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(killed, signal.SIGKILL)

    # When the writer is SIGKILLed while they arrive
    killer = threading.Thread(target=kill_the_writer_once_runs_commit)
    killer.start()
    answers = asyncio.run(deliver_all())
    killer.join()
    # Then a new writer took over, and every delivery was answered with its run all the same:
    # those the dead writer had not answered, and those that came meanwhile, waited for it
    assert writer.pid not in (None, killed)
    assert {a.status_code for a in answers} <= {200, 202}, Counter(a.status_code for a in answers)
    run_ids = [a.json()["run_id"] for a in answers]
    assert all(run_status(store, run_id) == "running" for run_id in run_ids)
    # And a delivery sent again finds its run: one run a delivery, none made twice
    again = asyncio.run(deliver_all())
    assert [(a.status_code, a.json()["run_id"]) for a in again] == [(200, r) for r in run_ids]
    assert count(store, "runs") == len(deliveries) == len(set(run_ids))


def test_a_gateway_is_not_ready_while_its_run_writer_is_started_again(gateway: Gateway) -> None:
    # Given a ready gateway
    writer = gateway.app.state.intake.writer
    killed = writer.pid
    assert killed is not None
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/readyz").status_code == 200
        # When its run writer dies
        os.kill(killed, signal.SIGKILL)
        # Then /readyz says so (a load balancer sends deliveries elsewhere meanwhile)...
        seen: list[httpx.Response] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            answer = client.get("/readyz")
            if answer.status_code == 503:
                seen.append(answer)
                break
            time.sleep(0.01)
        assert seen, "the gateway kept saying it was ready without a run writer"
        assert "run writer" in seen[0].json()["detail"]
        # ...until a new writer runs
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
    assert writer.pid not in (None, killed)
