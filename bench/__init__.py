"""Baton's benchmarks: figures and ratios against a baseline measured in the same run.

Run them with ``.venv/bin/python -m bench`` (``make bench``); ``--only P1,P3`` picks some,
``--quick`` shrinks the sizes for a smoke run, ``--json`` prints machine-readable results.
Each benchmark starts its own embedded Valkey and SQLite store in a temporary folder and
removes them afterwards. Benchmarks are not tests: a missed goal is reported, not raised.

| id | what                                                        | goal                 |
| -- | ----------------------------------------------------------- | -------------------- |
| P1 | no-op step throughput vs a bare Dramatiq actor              | >= 0.5 of bare       |
| P2 | hop latency in a 200-step chain of 20 ms bodies             | p50 <= 15, p99 <= 50 ms |
| P3 | claim+commit time and bytes per step at ~1000 vs ~10        | <= 1.2x              |
| P4 | SIGKILLed worker: kill until the step runs again elsewhere  | <= lease + 2 s       |
"""
