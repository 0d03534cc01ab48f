"""Fixtures for the composition root's tests: a clean environment and embedded Valkeys."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from baton._valkey import EmbeddedValkey, EmbeddedValkeyError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BATON_* or OPENAI_* variables and no .env from the developer; returns the new cwd."""
    for name in list(os.environ):
        if name.startswith(("BATON_", "OPENAI_")):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture
def make_valkey(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedValkey]]:
    """Factory: `make_valkey("a")` supervises the server of the home `tmp_path / "a"`.

    Every server started through it is stopped at the end of the test, or killed if it
    will not stop, so no test leaves a daemon behind.
    """
    supervisors: list[EmbeddedValkey] = []

    def make(name: str = "home") -> EmbeddedValkey:
        supervisor = EmbeddedValkey(tmp_path / name)
        supervisors.append(supervisor)
        return supervisor

    yield make

    for supervisor in supervisors:
        try:
            supervisor.stop(timeout=10)
        except EmbeddedValkeyError:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(supervisor.pid_path.read_text()), signal.SIGKILL)
