"""Short runs of scripts/soak.py: graceful recycling and upgrades under load drop nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import TESTS

SOAK = TESTS.parent / "scripts" / "soak.py"


def test_recycling_under_load_drops_no_connection_and_no_answer():
    result = subprocess.run(
        [sys.executable, str(SOAK), "--phase", "recycle", "--duration", "6", "--connections", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert report["answered"] > 1000
    assert report["workers_retired"] >= 4
    assert (report["dropped"], report["wrong_answers"], report["stalled"]) == (0, 0, 0)
    assert report["connections_opened"] == 20  # never had to reconnect


def test_sigkill_loses_only_what_the_killed_workers_held():
    result = subprocess.run(
        [sys.executable, str(SOAK), "--phase", "kill", "--duration", "5", "--connections", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert report["workers_killed"] >= 2
    assert report["dropped"] <= report["killed_workers_held"]
    assert report["answered"] > 1000 and report["wrong_answers"] == 0


def test_upgrades_under_load_drop_refuse_and_garble_nothing():
    result = subprocess.run(
        [sys.executable, str(SOAK), "--phase", "upgrade", "--duration", "7", "--upgrade-every", "1.5", "--connections", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert report["upgrades"] >= 2 and report["upgrades_failed"] == 0
    assert (report["dropped"], report["wrong_answers"], report["stalled"], report["connect_errors"]) == (0, 0, 0, 0)
    assert report["connections_opened"] == 20 and report["answered"] > 1000
    assert report["redis_benchmark_errors"] == 0
