"""Shared fixtures: a real Valkey server, a real store (SQLite, or PostgreSQL when CI provides
one), in-process workers and `baton` subprocesses. Fixtures are factories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from baton._valkey import EmbeddedValkey
from store import RUN_FINISHED, Store, run_status, upgrade
from workers import Runtime, RuntimeConfig, Worker

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("BATON_TEST_POSTGRES_URL")

# Fast tunings for tests: short leases and intervals so recovery is seconds, not minutes.
FAST = RuntimeConfig(
    lease_seconds=2.0,
    default_retries=2,
    min_backoff_ms=50,
    max_backoff_ms=500,
    relay_after_seconds=1.0,
    republish_after_seconds=5.0,
    reconcile_interval_seconds=0.2,
    worker_idle_timeout_ms=50,
)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """One real Valkey for the session, supervised by Baton's own embedded supervisor."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey-home"))
    server.ensure_running()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey_server: EmbeddedValkey) -> str:
    """The session's Valkey, emptied for this test."""
    url = valkey_server.ensure_running()
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty store: SQLite in tmp_path, or a fresh schema on PostgreSQL in CI.

    A test marked ``sqlite`` is about SQLite itself (its single writer lock) and always gets
    SQLite, so it runs in every pass instead of being skipped.
    """
    if POSTGRES_URL is None or request.node.get_closest_marker("sqlite") is not None:
        url = f"sqlite:///{tmp_path}/baton.db"
        upgrade(url)
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    yield opened
    opened.dispose()


@pytest.fixture
def make_runtime(store: Store, redis_url: str) -> Callable[..., Runtime]:
    """Factory: a Runtime on the test's store and Valkey, FAST tunings unless overridden."""

    def make(**overrides: Any) -> Runtime:
        config = RuntimeConfig(**{**FAST.__dict__, **overrides})
        return Runtime(store, redis_url, config)

    return make


@pytest.fixture
def start_worker(make_runtime: Callable[..., Runtime]) -> Iterator[Callable[..., Worker]]:
    """Factory: an in-process worker (Dramatiq threads + maintenance), stopped after the test."""
    started: list[Worker] = []

    def start(threads: int = 4, maintenance: bool = True, **overrides: Any) -> Worker:
        worker = Worker(make_runtime(**overrides), threads=threads, maintenance=maintenance)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop(timeout_ms=5_000)


def wait_for_run(
    store: Store, run_id: str, timeout: float = 30.0, until: frozenset[str] = RUN_FINISHED
) -> str:
    """Poll until the run reaches one of ``until``; fail the test with its status otherwise."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = run_status(store, run_id)
        if status in until:
            return status
        time.sleep(0.02)
    pytest.fail(f"run {run_id} is {status} after {timeout} s; expected one of {sorted(until)}")


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def baton_env(tmp_path: Path, redis_url: str, database_url: str) -> dict[str, str]:
    """Environment for `baton` subprocesses on the test's Valkey and store, FAST tunings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "OPENAI_"))}
    env.update(
        BATON_HOME=str(tmp_path / "home"),
        BATON_REDIS_URL=redis_url,
        BATON_DATABASE_URL=database_url,
        BATON_LEASE_SECONDS=str(FAST.lease_seconds),
        BATON_DEFAULT_RETRIES=str(FAST.default_retries),
        BATON_MIN_BACKOFF_MS=str(FAST.min_backoff_ms),
        BATON_MAX_BACKOFF_MS=str(FAST.max_backoff_ms),
        BATON_RELAY_AFTER_SECONDS=str(FAST.relay_after_seconds),
        BATON_REPUBLISH_AFTER_SECONDS=str(FAST.republish_after_seconds),
        BATON_RECONCILE_INTERVAL_SECONDS=str(FAST.reconcile_interval_seconds),
        BATON_WORKER_IDLE_TIMEOUT_MS=str(FAST.worker_idle_timeout_ms),
        PYTHONPATH=str(REPO),
    )
    return env


def baton(
    env: dict[str, str], *args: str, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `baton` command in the repo folder and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "baton", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@pytest.fixture
def worker_processes(
    baton_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Factory: `baton worker MODULE...` as a real subprocess, returned once it is consuming;
    its stderr goes to tmp_path/worker-N.log. All are killed after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(
        *modules: str,
        threads: int = 4,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> subprocess.Popen[bytes]:
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "baton", "worker", "-t", str(threads), *modules],
                cwd=REPO,
                env=env or baton_env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                start_new_session=True,
            )
        started.append(process)
        deadline = time.monotonic() + ready_timeout
        while b" running " not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
