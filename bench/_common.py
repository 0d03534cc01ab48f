"""What every benchmark shares: a throwaway stack, statistics, results and the table."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from baton._valkey import EmbeddedValkey
from store import Store, upgrade

REPO = Path(__file__).resolve().parent.parent

# Progress goes to stderr so that `--json` leaves stdout to the results.
progress = Console(stderr=True, highlight=False)


def say(message: str) -> None:
    progress.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


# -- a throwaway stack ---------------------------------------------------------------------


class Sandbox:
    """An embedded Valkey and a migrated SQLite store in a temporary folder, removed on exit."""

    def __init__(self, name: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"baton-bench-{name}-"))
        self.valkey = EmbeddedValkey(self.directory / "home")
        self.database_path = self.directory / "baton.db"
        self.database_url = f"sqlite:///{self.database_path}"
        self.redis_url = ""
        self._stores: list[Store] = []

    def __enter__(self) -> Sandbox:
        try:
            self.redis_url = self.valkey.ensure_running()
            upgrade(self.database_url)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def store(self, factory: Callable[[str], Store] = Store) -> Store:
        """A store on the sandbox's database, disposed of when the sandbox closes."""
        opened = factory(self.database_url)
        self._stores.append(opened)
        return opened

    def flush_redis(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        for opened in self._stores:
            opened.dispose()
        self._stores.clear()
        try:
            self.valkey.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def scalar(store: Store, sql: str, **parameters: Any) -> Any:
    with store.read() as connection:
        return connection.execute(text(sql), parameters).scalar()


def rows(store: Store, sql: str, **parameters: Any) -> list[Any]:
    with store.read() as connection:
        return list(connection.execute(text(sql), parameters).all())


def wait_until(
    condition: Callable[[], bool], *, timeout: float, every: float = 0.1, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(every)


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


# -- results -------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure: Baton's value, the baseline it is compared with, and the goal if any."""

    measure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    passed: bool | None = None  # None: shown for context, no goal

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


@dataclass
class Result:
    id: str
    title: str
    rows: list[Row] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        verdicts = [r.passed for r in self.rows if r.passed is not None]
        if self.error is not None:
            return False
        return all(verdicts) if verdicts else None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, shown in zip(self.rows, data["rows"], strict=True):
            shown["ratio"] = row.ratio
        data["passed"] = self.passed
        return data


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if abs(value) < 10 else f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "":
        return f"{value:,.1f}" if value != int(value) else f"{value:,.0f}"
    return f"{value:,.2f} {unit}"


def render(results: Sequence[Result], console: Console) -> None:
    table = Table(title="Baton benchmarks", title_justify="left", show_lines=False)
    table.add_column("id", style="bold")
    table.add_column("measure")
    table.add_column("Baton", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("goal")
    table.add_column("result")
    for index, result in enumerate(results):
        if index:
            table.add_section()
        if result.error is not None:
            table.add_row(result.id, result.title, "-", "-", "-", "", "[red]error[/red]")
            continue
        for position, row in enumerate(result.rows):
            baseline = format_value(row.baseline, row.unit)
            if row.baseline_label and row.baseline is not None:
                baseline = f"{baseline} ({row.baseline_label})"
            ratio = row.ratio
            verdict = {True: "[green]pass[/green]", False: "[red]miss[/red]", None: ""}[row.passed]
            table.add_row(
                result.id if position == 0 else "",
                row.measure,
                format_value(row.value, row.unit),
                baseline,
                "-" if ratio is None else f"{ratio:.2f}x",
                row.goal,
                verdict,
            )
    console.print(table)
    for result in results:
        console.print(f"\n[bold]{result.id}[/bold] {result.title} ({result.seconds:.0f} s)")
        if result.error is not None:
            console.print(f"  [red]error:[/red] {result.error}")
        if result.settings:
            shown = ", ".join(f"{k}={v}" for k, v in result.settings.items())
            console.print(f"  settings: {shown}", soft_wrap=False)
        for note in result.notes:
            console.print(f"  - {note}")
