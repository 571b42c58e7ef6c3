"""A quick run of scripts/hostile.py: every attack phase against the real server, every target met."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import TESTS

HOSTILE = TESTS.parent / "scripts" / "hostile.py"
#: About 25 s on an idle 2-core machine; pytest-timeout (pyproject) allows 120 s per test.
RUN_TIMEOUT = 100
#: The latency target is the harness's, run alone (5x the baseline p99, floored at 1 ms).
#: Here the suite may share the machine with another (CI runs two side by side), which
#: alone has pushed a phase's p99 past 5 ms; a worker blocked by an attack would still
#: show hundreds of milliseconds.
P99_FACTOR = "40"


def test_quick_hostile_run_meets_every_target(tmp_path: Path) -> None:
    report_file = tmp_path / "hostile.json"
    proc = subprocess.Popen(
        [sys.executable, str(HOSTILE), "--quick", "--p99-factor", P99_FACTOR, "--json", str(report_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness stops its server and clients on SIGTERM
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        raise AssertionError(f"hostile.py --quick took more than {RUN_TIMEOUT} s; its output:\n{output}") from None
    assert proc.returncode == 0, f"hostile.py --quick exited {proc.returncode}; its output:\n{output}"
    report = json.loads(report_file.read_text())
    assert [p["phase"] for p in report["phases"]] == [
        "baseline",
        "senders",
        "slowloris",
        "giant",
        "flood",
        "resets",
        "control",
        "hup",
        "kill",
        "idle",
    ], output
    assert report["phases"][0]["answers"] > 500, output  # the well-behaved clients really ran
    assert [t["target"] for t in report["targets"] if not t["ok"]] == [], output
