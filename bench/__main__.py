"""``python -m bench [--only P1,P3] [--quick] [--json]``: run the benchmarks, print the table.

Exit status: 0 when every selected benchmark ran (a missed goal is a finding, not a
failure), 1 when one of them could not run, 2 on a bad option.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from types import ModuleType

from rich.console import Console

from bench import (
    p1_throughput,
    p2_hop_latency,
    p3_growth,
    p4_recovery,
    p5_concurrency,
    p6_ingest,
    p7_tracing,
)
from bench._common import Result, render, say

BENCHMARKS: dict[str, ModuleType] = {
    "P1": p1_throughput,
    "P2": p2_hop_latency,
    "P3": p3_growth,
    "P4": p4_recovery,
    "P5": p5_concurrency,
    "P6": p6_ingest,
    "P7": p7_tracing,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Baton's benchmarks: figures and ratios against a baseline measured in "
        "the same run. " + ", ".join(f"{k}: {m.TITLE}" for k, m in BENCHMARKS.items()),
    )
    parser.add_argument(
        "--only", metavar="P1,P3", help="comma-separated benchmark ids to run (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument(
        "--json", action="store_true", help="print the results as JSON on stdout instead"
    )
    options = parser.parse_args(argv)
    selected = list(BENCHMARKS)
    if options.only:
        selected = [part.strip().upper() for part in options.only.split(",") if part.strip()]
        unknown = [name for name in selected if name not in BENCHMARKS]
        if unknown or not selected:
            parser.error(
                f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(BENCHMARKS)}"
            )
    # Workers log lost leases and the like at WARNING; the benchmark's own lines are enough.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    say(
        f"running {', '.join(selected)}{' (quick)' if options.quick else ''} on "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}"
    )
    load_before = os.getloadavg()
    results = [_run(name, BENCHMARKS[name].run, options.quick) for name in selected]
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m_before": round(load_before[0], 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    if options.json:
        shown = {
            "quick": options.quick,
            "machine": machine,
            "results": [r.as_json() for r in results],
        }
        print(json.dumps(shown, indent=2))
    else:
        console = Console(width=max(Console().width, 150))
        render(results, console)
        console.print(
            f"\nmachine: {machine['cpus']} CPU(s), Python {machine['python']}, load average "
            f"(1 min) {machine['load_average_1m_before']} before, "
            f"{machine['load_average_1m_after']} after; ratios compare figures measured in "
            "this run, on this machine"
        )
    return 1 if any(r.error is not None for r in results) else 0


def _run(name: str, benchmark: Callable[[bool], Result], quick: bool) -> Result:
    say(f"[bold]{name}[/bold] starting")
    started = time.monotonic()
    try:
        result = benchmark(quick)
    except Exception as error:
        say(f"[red]{name} could not run:[/red] {error}")
        traceback.print_exc()
        result = Result(name, BENCHMARKS[name].TITLE, error=f"{type(error).__name__}: {error}")
    result.seconds = time.monotonic() - started
    return result


if __name__ == "__main__":
    sys.exit(main())
