"""A short run of scripts/instructions.py: redis-server under callgrind and strace, one case."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from harness import TESTS

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("valgrind", "strace", "redis-server", "redis-benchmark")),
    reason="needs valgrind, strace, redis-server and redis-benchmark (.ci/run installs them)",
)


def test_instructions_counts_a_servers_instructions_and_system_calls_per_request():
    command = [sys.executable, str(TESTS.parent / "scripts" / "instructions.py")]
    command += ["--only", "redis-server", "--case", "-P 16", "--requests", "1000", "--syscalls"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(r"^\| redis-server \| ([\d,]+) · ([\d.]+) \|$", result.stdout, re.MULTILINE)
    assert row is not None, result.stdout
    instructions, calls = int(row.group(1).replace(",", "")), float(row.group(2))
    # redis-server answers 16 pipelined PINGs with one read and one write: some hundreds to a
    # few thousand instructions per request, well under one system call.
    assert 100 < instructions < 50_000, result.stdout
    assert 0 < calls < 1, result.stdout
