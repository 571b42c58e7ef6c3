"""A short run of scripts/kv_bench.py: both drivers, ours and raw, one process and two."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import TESTS
from redisserver import AVAILABLE


def test_kv_bench_measures_every_operation_of_both_drivers():
    result = subprocess.run(
        [sys.executable, str(TESTS.parent / "scripts" / "kv_bench.py"), "--ops", "300", "--rounds", "1", "--processes", "2"]
        + ["--target", "1000", "--json"],  # the figures belong in docs/kv.md, not in a test's verdict
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    drivers = {"sqlite", "redis"} if AVAILABLE else {"sqlite"}
    seen = {(row["driver"], row["operation"], row["processes"]) for row in report["rows"]}
    assert seen == {(d, op, n) for d in drivers for op in ("get", "set", "incr", "mget") for n in (1, 2)}
    assert all(row["ours_per_s"] > 0 and row["raw_per_s"] > 0 for row in report["rows"])
