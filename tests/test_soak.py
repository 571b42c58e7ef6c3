"""Short runs of scripts/soak.py: graceful recycling and upgrades under load drop nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from harness import TESTS

SOAK = TESTS.parent / "scripts" / "soak.py"


def soak(phase: str, *args: str) -> dict[str, Any]:
    """Run one phase with 20 connections; return its report (the run must meet its targets)."""
    result = subprocess.run(
        [sys.executable, str(SOAK), "--phase", phase, "--connections", "20", "--json", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return report  # type: ignore[no-any-return]


def test_recycling_under_load_drops_no_connection_and_no_answer():
    report = soak("recycle", "--duration", "6")
    assert report["answered"] > 1000
    assert report["workers_retired"] >= 4
    assert (report["dropped"], report["wrong_answers"], report["stalled"]) == (0, 0, 0)
    assert report["connections_opened"] == 20  # never had to reconnect


def test_sigkill_loses_only_what_the_killed_workers_held():
    report = soak("kill", "--duration", "5")
    assert report["workers_killed"] >= 2
    assert report["dropped"] <= report["killed_workers_held"]
    assert report["answered"] > 1000 and report["wrong_answers"] == 0


def test_upgrades_under_load_drop_refuse_and_garble_nothing():
    report = soak("upgrade", "--duration", "7", "--upgrade-every", "1.5")
    assert report["upgrades"] >= 2 and report["upgrades_failed"] == 0
    assert (report["dropped"], report["wrong_answers"], report["stalled"], report["connect_errors"]) == (0, 0, 0, 0)
    assert report["connections_opened"] == 20 and report["answered"] > 1000
    assert report["redis_benchmark_errors"] == 0
