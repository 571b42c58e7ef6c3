"""A real HAProxy (Debian's ``haproxy``) in front of two prefork_tcp instances, as on two
machines: ``send-proxy`` to one, ``send-proxy-v2`` to the other, health checks that
send a PROXY header too (``check-send-proxy``); the application sees each client's own
address and port."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from harness import Client, Server, connects, free_port, servers_config, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy not installed")


class HAProxy:
    """``haproxy`` in the foreground on a loopback port, balancing over ``backends``."""

    def __init__(self, tmp_path: Path, backends: dict[str, tuple[str, str]]) -> None:
        self.port = free_port()
        servers = "\n".join(
            f"    server {name} {address} {send} check check-send-proxy inter 300ms" for name, (address, send) in backends.items()
        )
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "global\n    maxconn 200\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"
            f"frontend edge\n    bind 127.0.0.1:{self.port}\n    default_backend instances\n"
            f"backend instances\n    balance roundrobin\n{servers}\n"
        )
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        wait_for(self._listening, what="haproxy listening")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.proc.stdout.read().decode()}")  # type: ignore[union-attr]
        return connects(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def balancer(tmp_path: Path):
    made: list[HAProxy] = []

    def make(backends: dict[str, tuple[str, str]]) -> HAProxy:
        made.append(HAProxy(tmp_path, backends))
        return made[-1]

    yield make
    for proxy in made:
        proxy.stop()


def instance(tmp_path: Path, name: str, mode: str) -> Server:
    directory = tmp_path / name
    directory.mkdir()
    server = Server(directory, servers_config("edge", edge=f'proxy_protocol = "{mode}"\n'), workers=2)
    return server.wait_ready()


def health_checks(server: Server) -> set[str]:
    """Connections that ended without a message: the balancer's health checks."""
    events = server.events()
    talked = {e["uuid"] for e in events if e["event"] == "DATA"}
    return {e["uuid"] for e in events if e["event"] == "CLOSE" and e["uuid"] not in talked}


@pytest.mark.parametrize("modes", [("v1", "v2"), ("auto", "auto")])
def test_each_client_is_seen_with_its_own_address_through_haproxy(tmp_path, balancer, modes):
    one, two = instance(tmp_path, "one", modes[0]), instance(tmp_path, "two", modes[1])
    try:
        host_one, port_one = one.address("edge")
        host_two, port_two = two.address("edge")
        proxy = balancer({"one": (f"{host_one}:{port_one}", "send-proxy"), "two": (f"{host_two}:{port_two}", "send-proxy-v2")})
        clients = [Client(("127.0.0.1", proxy.port)) for _ in range(8)]
        mine = {}
        for index, client in enumerate(clients):
            client.send(f"hello {index}\r\n".encode())
            assert client.line() == f"hello {index}\r\n".encode()
            host, port = client.sock.getsockname()
            mine[f"hello {index}\r\n"] = f"{host}:{port}"
        for client in clients:
            client.close()
        seen = {e["body"]: e["remote"] for server in (one, two) for e in server.events() if e["event"] == "DATA"}
        assert seen == mine  # every client's own address and port, through either instance
        assert all(any(e["event"] == "DATA" for e in server.events()) for server in (one, two))  # both took clients
        # The health checks send a PROXY header too (LOCAL in version 2): each is a connection
        # of the balancer's own, and none is refused.
        for server in (one, two):
            wait_for(lambda server=server: len(health_checks(server)) >= 2, what="health checks")
            assert "without CONNECTED" not in server.log
    finally:
        for server in (one, two):
            server.kill()
