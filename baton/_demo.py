"""`baton demo`: the main job, end to end, on the embedded defaults."""

from __future__ import annotations

import time

from rich.console import Console

from baton import _render
from baton._stack import Stack
from store import run_detail, run_status
from workers import Worker, import_modules


def run_demo(parts: Stack, out: Console, err: Console) -> int:
    """Start the chain example on a worker in this process, wait, print the step tree."""
    started = time.monotonic()
    parts.upgrade_schema()
    import_modules(["examples.chain"])
    from examples.chain import Start

    parts.check_reachable()
    worker = Worker(parts.runtime, threads=4)
    worker.start()
    try:
        created = parts.runtime.start_run(Start(n=5))
        err.print(f"started run {created.run_id} (chain.start n=5)")
        deadline = time.monotonic() + 60
        while run_status(parts.store, created.run_id) not in ("succeeded", "failed", "canceled"):
            if time.monotonic() > deadline:
                err.print("[red]the run did not finish within 60 s[/red]")
                return 1
            time.sleep(0.02)
    finally:
        worker.stop()
    out.print(_render.run_view(run_detail(parts.store, created.run_id)))
    status = run_status(parts.store, created.run_id)
    err.print(f"done in {time.monotonic() - started:.1f} s: run {status}")
    return 0 if status == "succeeded" else 1
