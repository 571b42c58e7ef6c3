"""A short run of scripts/smtp_bench.py: Postfix's smtp-source delivers to the SMTP example
and to aiosmtpd, with 1 and 50 sessions, and every message is accepted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TESTS

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
pytestmark = [
    pytest.mark.skipif(not Path(SMTP_SOURCE).exists(), reason="smtp-source not installed (Debian: postfix; .ci/run installs it)"),
    pytest.mark.skipif(importlib.util.find_spec("aiosmtpd") is None, reason="aiosmtpd not installed (the test extra has it)"),
    pytest.mark.skipif(shutil.which("taskset") is None or (os.cpu_count() or 1) < 2, reason="needs taskset and two CPUs"),
]


def test_smtp_bench_delivers_every_message_to_both_servers():
    result = subprocess.run(
        [sys.executable, str(TESTS.parent / "scripts" / "smtp_bench.py"), "--rounds", "1", "--messages", "200", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # smtp-source fails on any reply but 2xx/3xx
    report = json.loads(result.stdout)
    seen = {(row["server"], row["case"]) for row in report["rows"]}
    assert {("prefork_tcp", "1 session"), ("prefork_tcp", "50 sessions"), ("aiosmtpd", "1 session"), ("aiosmtpd", "50 sessions")} <= seen
    assert all(row["messages_per_s"] > 0 for row in report["rows"])
