"""Running workers (and the rest of the stack) in the foreground until told to stop."""

from __future__ import annotations

import gc
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

from baton._stack import Stack
from workers import Worker

_logger = logging.getLogger("baton")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        _logger.info("received signal %d; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def run_worker_here(parts: Stack, threads: int, metrics_port: int | None = None) -> None:
    """One worker process: this one. Returns after SIGTERM or Ctrl-C, once steps have drained."""
    stop = _stop_on_signals()
    if metrics_port is not None:
        from workers._metrics import serve_metrics

        serve_metrics(metrics_port, "127.0.0.1")
    worker = Worker(parts.runtime, threads=threads)
    # What the worker has imported (its actor modules, the openai SDK's types: some 200,000
    # objects) lives as long as the process. Frozen, the collector's full passes skip it:
    # each walked it all and held a busy worker up for ~100 ms (P5 drained 0.4 s sooner).
    gc.collect()
    gc.freeze()
    # What a step makes mostly dies with it: collecting the young generation every 5,000
    # allocations instead of 700 lets it die first instead of being walked, promoted and
    # walked again (P5: 160-190 ms of collection per run instead of 270-310 ms).
    gc.set_threshold(5_000, 10, 10)
    worker.start()
    print(f"worker {parts.runtime.owner} running {threads} thread(s)", file=sys.stderr, flush=True)
    stop.wait()
    worker.stop()


class Children:
    """Child processes kept alive: one that exits unexpectedly is started again."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.commands = commands
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.processes = [subprocess.Popen(command) for command in self.commands]

    def supervise(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            for index, process in enumerate(self.processes):
                if process.poll() is not None:
                    _logger.warning(
                        "%s exited with %s; starting it again",
                        " ".join(self.commands[index]),
                        process.returncode,
                    )
                    self.processes[index] = subprocess.Popen(self.commands[index])

    def stop(self, timeout: float = 30.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()


def baton_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "baton", *arguments]


def run_worker_processes(
    modules: list[str], processes: int, threads: int, metrics_port: int | None = None
) -> None:
    stop = _stop_on_signals()
    children = Children(
        [
            baton_command(
                "worker",
                "-p",
                "1",
                "-t",
                str(threads),
                *modules,
                *(["--metrics-port", str(metrics_port + index)] if metrics_port else []),
            )
            for index in range(processes)
        ]
    )
    children.start()
    children.supervise(stop)
    children.stop()


def run_stack(parts: Stack, modules: list[str], *, processes: int, threads: int, port: int) -> None:
    """`baton up`: the embedded Valkey is already running; start workers and the gateway in
    children."""
    stop = _stop_on_signals()
    token, where = api_token(parts)
    # The children read it through their settings, like every other BATON_ variable.
    os.environ["BATON_API_TOKEN"] = token
    commands = []
    if parts.settings.openai_api_key is None:
        # No model configured: Baton's offline model, over real HTTP, for every worker.
        model_port = _free_port()
        commands.append(baton_command("model", "serve", "--port", str(model_port)))
        os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{model_port}/v1"
        os.environ["OPENAI_API_KEY"] = "offline"
        print(
            f"no OPENAI_API_KEY: the offline model serves http://127.0.0.1:{model_port}/v1",
            file=sys.stderr,
            flush=True,
        )
    commands += [
        baton_command("worker", "-p", "1", "-t", str(threads), *modules) for _ in range(processes)
    ]
    commands.append(baton_command("serve", "--port", str(port), *modules))
    children = Children(commands)
    children.start()
    print(
        f"baton is up: {processes} worker process(es), the gateway on http://127.0.0.1:{port} "
        f"(API token {where}: {token}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    children.supervise(stop)
    children.stop()


def api_token(parts: Stack) -> tuple[str, str]:
    """BATON_API_TOKEN, else the token kept in BATON_HOME (made on first use), and where it is."""
    if parts.settings.api_token is not None:
        return parts.settings.api_token.get_secret_value(), "from BATON_API_TOKEN"
    path = parts.settings.home / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), f"in {path}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
