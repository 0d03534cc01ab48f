"""Fixtures for the agent tests: offline models over real HTTP, and workers pointed at them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from store import Store
from store._tables import model_calls
from workers import Runtime, Worker
from workers.agents.offline_model import OfflineModelConfig, OfflineModelHandle, start_in_thread

StartModel = Callable[..., OfflineModelHandle]
StartAgentWorker = Callable[..., Worker]


@pytest.fixture
def offline_model() -> Iterator[StartModel]:
    """Factory: ``offline_model(delay_seconds=1, cassette=...)`` serves an offline model on a
    free port; every one is stopped after the test."""
    handles: list[OfflineModelHandle] = []

    def start(**config: Any) -> OfflineModelHandle:
        handle = start_in_thread(OfflineModelConfig(**config))
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


class _Workers:
    """In-process workers that talk to an offline model; stop one early with ``stop``."""

    def __init__(self, make_runtime: Callable[..., Runtime]) -> None:
        self._make_runtime = make_runtime
        self.running: list[Worker] = []

    def start(self, model: OfflineModelHandle, threads: int = 4, **overrides: Any) -> Worker:
        # Dramatiq keeps one global event loop thread for async actors: one worker at a time.
        assert not self.running, "stop the running worker first: async actors share one loop"
        runtime = self._make_runtime(
            model_base_url=model.base_url, model_api_key="offline", **overrides
        )
        worker = Worker(runtime, threads=threads)
        worker.start()
        self.running.append(worker)
        return worker

    def stop(self, worker: Worker) -> None:
        self.running.remove(worker)
        worker.stop(timeout_ms=5_000)


@pytest.fixture
def agent_workers(make_runtime: Callable[..., Runtime]) -> Iterator[_Workers]:
    """``agent_workers.start(model)``: an in-process worker whose model calls go to ``model``
    through the real openai client (FAST tunings); ``agent_workers.stop(worker)`` stops it."""
    workers = _Workers(make_runtime)
    yield workers
    for worker in list(workers.running):
        workers.stop(worker)


@pytest.fixture
def agent_worker(agent_workers: _Workers) -> StartAgentWorker:
    """Factory: ``agent_worker(model)`` is a running in-process worker talking to ``model``."""
    return agent_workers.start


@pytest.fixture
def model_env(baton_env: dict[str, str]) -> Callable[[OfflineModelHandle], dict[str, str]]:
    """Factory: the environment of a `baton` subprocess whose model is this offline model."""

    def env_for(model: OfflineModelHandle) -> dict[str, str]:
        return {**baton_env, "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "offline"}

    return env_for


@pytest.fixture
def recorded_model_calls(store: Store) -> Callable[[str], list[dict[str, Any]]]:
    """Factory: the model_calls rows of a run (request, response, usage), oldest first."""

    def read(run_id: str) -> list[dict[str, Any]]:
        with store.read() as connection:
            rows = connection.execute(
                select(model_calls)
                .where(model_calls.c.run_id == run_id)
                .order_by(model_calls.c.created_at)
            ).all()
        return [dict(row._mapping) for row in rows]

    return read
