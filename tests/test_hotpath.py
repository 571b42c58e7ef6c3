"""scripts/hotpath.py drives the real event loop and ping example; it must keep working."""

from __future__ import annotations

import subprocess
import sys

from harness import TESTS

HOTPATH = TESTS.parent / "scripts" / "hotpath.py"


def test_hotpath_serves_every_ping_it_feeds():
    result = subprocess.run(
        [sys.executable, str(HOTPATH), "--connections", "3", "--rounds", "2000"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ns of CPU per request (3 connections per poll" in result.stdout
