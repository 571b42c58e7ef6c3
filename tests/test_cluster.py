"""A short run of scripts/cluster.py: HAProxy in front of two instances, one upgraded and one
reloaded under load, both scraped throughout; the clients see nothing go wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from harness import TESTS

pytestmark = pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy not installed")


def test_an_upgrade_and_a_reload_behind_haproxy_drop_nothing_and_every_scrape_parses():
    result = subprocess.run(
        [sys.executable, str(TESTS.parent / "scripts" / "cluster.py"), "--duration", "6", "--connections", "10", "--short", "2"]
        + ["--cost-scrapes", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert (report["dropped"], report["wrong_addresses"], report["connect_failures"], report["scrape_failures"]) == (0, 0, 0, [])
    assert report["answers"] > 1000 and report["short_sessions"] > 10 and report["scrapes"] > 10
    assert report["actions"][0].startswith("upgrade one: upgraded") and report["actions"][1] == "reload two: reload complete"
    for instance in ("one", "two"):
        assert report["scrape_cost"][instance]["page_bytes"] > 1000
        assert report["counters"][instance]["connections_accepted_total{server=edge}"] > 0
