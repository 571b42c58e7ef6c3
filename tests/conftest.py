from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server

RECORDER = "recorder:main"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Start ``prefork-tcp serve`` processes; every one is stopped after the test."""
    servers: list[Server] = []

    def start(config: str = "", args: list[str] | None = None, workers: int | None = 2, ready: bool = True, **kwargs) -> Server:
        server = Server(tmp_path, config, args, workers=workers, **kwargs)
        servers.append(server)
        if ready:
            server.wait_ready(workers or 1)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One real redis-server for the session (tests use their own key prefixes); skipped without it."""
    from redisserver import AVAILABLE, RedisServer

    if not AVAILABLE:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
