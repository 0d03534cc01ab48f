"""The embedded Valkey: a real server, started, found again, stopped, restarted with its data."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from baton._valkey import EmbeddedValkey, EmbeddedValkeyError

REPO_ROOT = Path(__file__).resolve().parents[2]
MakeValkey = Callable[[str], EmbeddedValkey]


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def server_pid(url: str) -> int:
    with client_for(url) as client:
        return int(client.info("server")["process_id"])


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def wait_until_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while process_exists(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.05)


def ensure_running_in_subprocess(home: Path) -> str:
    """Start (or find) the server from another Python process, as `baton up` would."""
    code = (
        "import sys; from pathlib import Path; from baton._valkey import EmbeddedValkey; "
        "print(EmbeddedValkey(Path(sys.argv[1])).ensure_running(timeout=30))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code, str(home)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return finished.stdout.strip()


def test_starts_a_local_server_that_answers(make_valkey: MakeValkey) -> None:
    # Given a fresh home
    valkey = make_valkey("home")
    assert not valkey.is_running()

    # When Baton ensures its broker runs
    url = valkey.ensure_running()

    # Then a real server answers on loopback, durable and protected
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", url)
    assert valkey.is_running() and valkey.url == url
    with client_for(url) as client:
        assert client.ping()
        config = client.config_get("*")
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes"
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert Path(config["dir"]) == valkey.directory
    assert valkey.pid_path.read_text().strip() == str(valkey.pid)


def test_a_second_call_reuses_the_running_server(make_valkey: MakeValkey) -> None:
    # Given a running server
    valkey = make_valkey("home")
    url = valkey.ensure_running()
    pid = server_pid(url)

    # When the same and another supervisor of that home ask again
    again = valkey.ensure_running()
    other = EmbeddedValkey(valkey.directory.parent).ensure_running()

    # Then they get the same server
    assert again == other == url
    assert server_pid(url) == pid == valkey.pid


def test_the_server_outlives_the_process_that_started_it(make_valkey: MakeValkey) -> None:
    # Given a server started by a process that has since exited
    valkey = make_valkey("home")
    url = ensure_running_in_subprocess(valkey.directory.parent)

    # Then it is still there, and this process reuses it
    assert valkey.is_running()
    assert valkey.ensure_running() == url


def test_writes_reach_the_append_only_file(make_valkey: MakeValkey) -> None:
    # Given a running server and a write
    valkey = make_valkey("home")
    url = valkey.ensure_running()
    with client_for(url) as client:
        client.set("baton:aof-probe", "durable")

        # When the log is rewritten
        client.bgrewriteaof()
        deadline = time.monotonic() + 10
        while True:
            persistence = client.info("persistence")
            if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                break
            assert time.monotonic() < deadline, "BGREWRITEAOF did not finish"
            time.sleep(0.05)

    # Then the key is on disk in the AOF directory
    files = list(valkey.directory.glob("appendonlydir/*")) + list(valkey.directory.glob("*.aof"))
    assert any(b"baton:aof-probe" in path.read_bytes() for path in files), files


def test_stop_then_restart_keeps_data_and_port(make_valkey: MakeValkey) -> None:
    # Given a server holding a key
    valkey = make_valkey("home")
    url = valkey.ensure_running()
    pid = server_pid(url)
    with client_for(url) as client:
        client.set("baton:kept", "yes")

    # When it is stopped
    valkey.stop()

    # Then its process has exited
    assert not process_exists(pid)
    assert not valkey.is_running() and valkey.url is None

    # When it is started again
    restarted = valkey.ensure_running()

    # Then it is a new process on the same port, with the key
    assert restarted == url
    assert server_pid(url) != pid
    with client_for(url) as client:
        assert client.get("baton:kept") == b"yes"


def test_a_killed_server_is_restarted_from_its_append_only_file(
    make_valkey: MakeValkey,
) -> None:
    # Given a server holding a key, then killed without any chance to save
    valkey = make_valkey("home")
    url = valkey.ensure_running()
    pid = server_pid(url)
    with client_for(url) as client:
        client.set("baton:survives", "kill -9")
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid)
    assert not valkey.is_running()

    # When Baton ensures its broker runs
    valkey.ensure_running()

    # Then the key came back from the AOF
    with client_for(url) as client:
        assert client.get("baton:survives") == b"kill -9"


def test_concurrent_threads_start_one_server(make_valkey: MakeValkey) -> None:
    # Given a fresh home and eight threads, each with its own supervisor
    home = make_valkey("home").directory.parent

    # When all ensure the server at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        urls = list(pool.map(lambda _: EmbeddedValkey(home).ensure_running(timeout=30), range(8)))

    # Then all got the one server
    assert len(set(urls)) == 1


def test_concurrent_processes_start_one_server(make_valkey: MakeValkey) -> None:
    # Given a fresh home
    valkey = make_valkey("home")
    home = valkey.directory.parent

    # When four processes ensure the server at once
    with ThreadPoolExecutor(max_workers=4) as pool:
        urls = list(pool.map(lambda _: ensure_running_in_subprocess(home), range(4)))

    # Then they all got the same server, and only one was started
    assert len(set(urls)) == 1
    log = valkey.log_path.read_text()
    assert log.count("just started") == 1, log


def test_a_taken_port_moves_the_server_to_a_free_one(make_valkey: MakeValkey) -> None:
    # Given a server that was stopped, and another program now on its port
    valkey = make_valkey("home")
    url = valkey.ensure_running()
    valkey.stop()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as squatter:
        # SO_REUSEADDR: the port may still be in TIME_WAIT from our own connections.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()

        # When it is started again
        moved = valkey.ensure_running()

    # Then it listens elsewhere and remembers the new port
    assert moved != url
    assert valkey.port_path.read_text().strip() in moved
    with client_for(moved) as client:
        assert client.ping()


def test_a_stranger_on_the_remembered_port_is_not_reused(make_valkey: MakeValkey) -> None:
    # Given another home's server listening on the port this home remembers
    stranger_url = make_valkey("stranger").ensure_running()
    valkey = make_valkey("home")
    valkey.directory.mkdir(parents=True)
    valkey.port_path.write_text(stranger_url.rsplit(":", 1)[1].split("/")[0])

    # Then it is not taken for ours
    assert not valkey.is_running()

    # And ensuring ours starts a server of its own
    url = valkey.ensure_running()
    assert url != stranger_url
    assert server_pid(url) != server_pid(stranger_url)


def test_stop_without_a_server_does_nothing(make_valkey: MakeValkey) -> None:
    valkey = make_valkey("home")
    valkey.stop()
    assert not valkey.is_running()


def write_fake_server(directory: Path, name: str, version: str, fails_with: str) -> Path:
    directory.mkdir(exist_ok=True)
    script = directory / name
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "Server v={version} sha=0:0"; exit 0; fi\n'
        f'echo "{fails_with}" >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return script


def test_a_server_that_cannot_start_reports_its_log(
    make_valkey: MakeValkey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a valkey-server on PATH that refuses its configuration
    bin_dir = tmp_path / "bin"
    write_fake_server(bin_dir, "valkey-server", "8.0.1", "FATAL CONFIG FILE ERROR (simulated)")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    # When Baton tries to start it
    with pytest.raises(EmbeddedValkeyError) as raised:
        make_valkey("home").ensure_running()

    # Then the error shows the server's output and what to do
    message = str(raised.value)
    assert "FATAL CONFIG FILE ERROR (simulated)" in message
    assert "valkey.conf" in message


def test_a_server_older_than_7_on_path_is_passed_over(
    make_valkey: MakeValkey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given only an old redis-server on PATH (ahead of any real one)
    bin_dir = tmp_path / "bin"
    old = write_fake_server(bin_dir, "redis-server", "6.2.0", "too old to run")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    # When Baton starts its broker
    url = make_valkey("home").ensure_running()

    # Then another binary runs it
    with client_for(url) as client:
        assert client.info("server")["executable"] != str(old)


def test_a_hung_server_is_reported_not_duplicated(make_valkey: MakeValkey) -> None:
    # Given this home's server, frozen so it no longer answers
    valkey = make_valkey("home")
    url = valkey.ensure_running()
    pid = server_pid(url)
    os.kill(pid, signal.SIGSTOP)
    try:
        # When Baton ensures its broker runs
        with pytest.raises(EmbeddedValkeyError) as raised:
            valkey.ensure_running(timeout=10)

        # Then it names the stuck process instead of starting a second one on the same AOF
        assert f"kill {pid}" in str(raised.value)
        assert valkey.log_path.read_text().count("just started") == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    assert valkey.ensure_running() == url
