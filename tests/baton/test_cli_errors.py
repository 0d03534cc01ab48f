"""Bad input through the real `baton` command: one clear line on stderr, the documented exit
code, and nothing written (DESIGN invariant 10; exit codes in the operator's surface)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from store import RunFilter, Store, list_runs
from tests.conftest import baton

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def assert_one_clear_line(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> str:
    """The command exited with ``code`` and said why in one line, with no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_runs(store: Store) -> bool:
    return list_runs(store, RunFilter()) == []


@pytest.mark.parametrize(
    ("arguments", "needles"),
    [
        pytest.param(
            ["run", "t_cli.no_such_event", "--data", "{}"],
            ["unknown event type 't_cli.no_such_event'", "registered types:"],
            id="unknown-event-type",
        ),
        pytest.param(
            ["run", "chain.start", "-m", "examples.chain", "--data", "{n: 5"],
            ["--data is not valid JSON", '{"n": 5}'],
            id="invalid-json",
        ),
        pytest.param(
            ["run", "chain.start", "-m", "examples.chain", "--data", '{"n": "five"}'],
            ["'chain.start'", "n: Input should be a valid integer"],
            id="field-fails-validation",
        ),
    ],
)
def test_bad_input_to_run_exits_2_with_one_line_and_writes_nothing(
    baton_env: dict[str, str], store: Store, arguments: list[str], needles: list[str]
) -> None:
    # When `baton run` is given bad input
    result = baton(baton_env, *arguments)
    # Then it says what is wrong in one line, exits 2, and no run was created
    assert_one_clear_line(result, EXIT_USAGE, *needles)
    assert no_runs(store)


def test_unreachable_redis_exits_3_with_one_line(baton_env: dict[str, str], store: Store) -> None:
    # Given BATON_REDIS_URL pointing at a port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = {**baton_env, "BATON_REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"}
    # When a run is started
    result = baton(env, "run", "chain.start", "-m", "examples.chain", "--data", '{"n": 1}')
    # Then it says Redis cannot be reached and how to fix it, exits 3, and wrote nothing
    assert_one_clear_line(result, EXIT_UNREACHABLE, f"127.0.0.1:{closed_port}", "BATON_REDIS_URL")
    assert no_runs(store)


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["runs", "show", "nope-not-a-run"], id="show"),
        pytest.param(["cancel", "nope-not-a-run", "--reason", "test"], id="cancel"),
        pytest.param(["signal", "nope-not-a-run", "approve", "--data", "{}"], id="signal"),
    ],
)
def test_an_unknown_run_id_exits_1_with_one_line(
    baton_env: dict[str, str], store: Store, arguments: list[str]
) -> None:
    # When a command names a run that does not exist
    result = baton(baton_env, *arguments)
    # Then it says so, points at `baton runs list`, and exits 1
    assert_one_clear_line(result, EXIT_FAILED, "'nope-not-a-run'", "baton runs list")
    assert no_runs(store)
