"""PROXY protocol servers (SPEC §2) against the real server: the header is read before
CONNECTED and never delivered, ``remote_address`` is the client it names, and a
connection without a valid header in time, or from a peer not allowed to send one, is
closed without CONNECTED."""

from __future__ import annotations

import signal
import socket
import struct
import time

import pytest
from harness import Client, closed_by_server, kinds, servers_config, uuid_of, wait_for

from prefork_tcp.proxyproto import V2_SIGNATURE

V1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 25\r\n"
V2_TCP6 = V2_SIGNATURE + b"\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::5") + bytes(16) + struct.pack("!HH", 50000, 25)
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


def proxy_config(mode: str, allow: str = "") -> str:
    extra = f'proxy_protocol = "{mode}"\n' + (f"proxy_allow_from = {allow}\n" if allow else "")
    return servers_config("edge", edge=extra)


def connected(server, count: int = 1) -> list[dict]:
    return wait_for(
        lambda: (found := [e for e in server.events() if e["event"] == "CONNECTED"]) and len(found) >= count and found, what="CONNECTED"
    )


@pytest.mark.parametrize(
    "mode, header, remote",
    [
        ("v1", V1, "203.0.113.7:40000"),
        ("v2", V2_TCP6, "[2001:db8::5]:50000"),
        ("auto", V1, "203.0.113.7:40000"),
        ("auto", V2_TCP6, "[2001:db8::5]:50000"),
    ],
)
def test_the_application_sees_the_client_the_header_names(start_server, mode, header, remote):
    server = start_server(proxy_config(mode))
    with Client(server.address("edge")) as client:
        client.send(header + b"first\r\n")  # the first message comes in the same packet
        assert client.line() == b"first\r\n"
        uuid = uuid_of(client)
    events = server.wait_events(uuid)
    assert kinds(events) == ["CONNECTED", "DATA", "DATA", "CLOSE"]
    assert {e["remote"] for e in events} == {remote}
    assert [e["body"] for e in events if e["event"] == "DATA"] == ["first\r\n", "uuid\r\n"]  # never the header


def test_a_header_sent_a_byte_at_a_time_is_read_whole(start_server):
    server = start_server(proxy_config("auto"))
    with Client(server.address("edge")) as client:
        for byte in V2_TCP6:
            client.send(bytes([byte]))
        client.send(b"hi\r\n")
        assert client.line() == b"hi\r\n"
    assert connected(server)[0]["remote"] == "[2001:db8::5]:50000"


def test_a_local_header_keeps_the_balancers_own_address(start_server):
    server = start_server(proxy_config("v2"))
    with Client(server.address("edge")) as client:
        client.send(V2_LOCAL + b"ping\r\n")
        assert client.line() == b"ping\r\n"
        local = client.sock.getsockname()
    assert connected(server)[0]["remote"] == f"{local[0]}:{local[1]}"


def refused(server, payload: bytes, why: str) -> None:
    """The connection is closed without CONNECTED, and the warning says why."""
    with Client(server.address("edge")) as client:
        if payload:
            client.send(payload)
        assert closed_by_server(client) == b""
    server.wait_log(rf"\[WARNING\] closing connection from \S+ \(server edge\) without CONNECTED: .*{why}")
    assert not any(e["event"] == "CONNECTED" for e in server.events())


@pytest.mark.parametrize(
    "mode, payload, why",
    [
        ("v1", b"HELO example.org\r\n", "not a version 1 header"),
        ("v2", V1, "not a version 2 header"),
        ("auto", b"GET / HTTP/1.0\r\n", "no PROXY header"),
        ("v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "not a port"),
        ("v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 " + b"x" * 120, "within 107 bytes"),
        ("auto", b"PROXY TCP4 1.2.3.4", "closed before its PROXY header was whole"),
    ],
)
def test_a_missing_or_malformed_header_closes_without_connected(start_server, mode, payload, why):
    server = start_server(proxy_config(mode))
    if why.startswith("closed before"):
        with Client(server.address("edge")) as client:
            client.send(payload)
            client.sock.shutdown(socket.SHUT_WR)
            assert closed_by_server(client) == b""
        server.wait_log(rf"without CONNECTED: {why}")
        return
    refused(server, payload, why)


def test_a_header_that_does_not_come_within_5s_closes_the_connection(start_server):
    server = start_server(proxy_config("auto"))
    started = time.monotonic()
    refused(server, b"PROXY TCP4 ", r"no PROXY header within 5s")
    assert 4.5 < time.monotonic() - started < 15


def test_a_peer_outside_proxy_allow_from_is_closed_at_once(start_server):
    server = start_server(proxy_config("v1", allow='["10.0.0.0/8", "192.0.2.1"]'))
    refused(server, V1, r"peer 127\.0\.0\.1:\d+ is not in proxy_allow_from")


def test_proxy_servers_and_plain_servers_live_side_by_side(start_server):
    server = start_server(servers_config("edge", "plain", edge='proxy_protocol = "v1"\n'))
    with Client(server.address("plain")) as plain, Client(server.address("edge")) as edge:
        plain.send(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")  # just a message, on a plain server
        assert plain.line() == b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
        edge.send(V1 + b"x\r\n")
        assert edge.line() == b"x\r\n"
    remotes = {e["server"]: e["remote"] for e in connected(server, 2)}
    assert remotes["edge"] == "203.0.113.7:40000" and remotes["plain"].startswith("127.0.0.1:")


def test_the_client_address_survives_a_handoff(start_server):
    server = start_server(proxy_config("v1"))
    with Client(server.address("edge")) as client:
        client.send(V1)
        uuid = uuid_of(client)
        server.send_signal(signal.SIGHUP)  # every worker replaced: the connection moves
        server.wait_log("reload complete")
        client.send(b"after\r\n")
        assert client.line() == b"after\r\n"
    events = server.wait_events(uuid)
    assert {e["remote"] for e in events} == {"203.0.113.7:40000"} and len({e["pid"] for e in events}) == 2
