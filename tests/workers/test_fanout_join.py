"""Fan-out and join under concurrency: N handlers run in parallel on 8 threads, and the join
fires exactly once per run with all N events, for several runs at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from store import Store, run_detail
from tests.actors import fanout
from tests.conftest import wait_for_run
from workers import Worker

RUNS, WIDTH = 5, 12


def most_at_once(spans: list[tuple[str, float, float]]) -> int:
    edges = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def test_a_join_fires_once_per_run_with_every_event_of_its_fan_out(
    store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given an in-process worker with 8 threads
    fanout.reset()
    worker = start_worker(threads=8)
    # When 5 runs each fan out into 12 items at once
    run_ids = [worker.runtime.start_run(fanout.Batch(size=WIDTH)).run_id for _ in range(RUNS)]
    # Then every run succeeds
    for run_id in run_ids:
        assert wait_for_run(store, run_id, timeout=30) == "succeeded"
    # And the items were handled in parallel, each once
    assert most_at_once(fanout.item_spans) >= 2
    assert Counter(run_id for run_id, _, _ in fanout.item_spans) == dict.fromkeys(run_ids, WIDTH)
    # And the join ran exactly once per run, with all 12 events
    assert sorted(run_id for run_id, _ in fanout.join_calls) == sorted(run_ids)
    assert all(sorted(indices) == list(range(WIDTH)) for _, indices in fanout.join_calls)
    for run_id in run_ids:
        detail = run_detail(store, run_id)
        [gathered] = [e for e in detail["events"] if e["type"] == "t_fanout.gathered"]
        assert gathered["data"] == {"indices": list(range(WIDTH))}
        [join] = [s for s in detail["steps"] if s["actor"].endswith("gather")]
        assert (join["attempts"], join["join_arrived"], join["join_expected"]) == (1, WIDTH, WIDTH)
