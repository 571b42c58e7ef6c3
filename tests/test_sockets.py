"""Listening addresses: parsing and printing them, naming peers, and binding (loopback, port 0)."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp.sockets import (
    Address,
    Listener,
    bind,
    format_peer,
    parse_address,
    rebind,
    remove_stale_socket,
    unlink_unix,
    unsent_bytes,
)
from prefork_tcp.timeouts import Timeouts


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="pt-") as directory:
        yield Path(directory)


# -- parsing and printing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, address",
    [
        ("tcp://127.0.0.1:8889", Address("tcp", "127.0.0.1", 8889)),
        ("127.0.0.1:0", Address("tcp", "127.0.0.1", 0)),
        ("localhost:65535", Address("tcp", "localhost", 65535)),
        ("example.com:25", Address("tcp", "example.com", 25)),
        (":25", Address("tcp", "0.0.0.0", 25)),
        ("tcp://:25", Address("tcp", "0.0.0.0", 25)),
        ("[::1]:25", Address("tcp", "::1", 25)),
        ("tcp://[::]:25", Address("tcp", "::", 25)),
        ("[fe80::1%eth0]:80", Address("tcp", "fe80::1%eth0", 80)),
        ("  127.0.0.1:7\n", Address("tcp", "127.0.0.1", 7)),
        ("127.0.0.1:007", Address("tcp", "127.0.0.1", 7)),
        ("unix:///run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix://relative.sock", Address("unix", path="relative.sock")),
        ("unix:///tmp/a b:1", Address("unix", path="/tmp/a b:1")),
    ],
)
def test_addresses(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "expected host:port"),
        ("host", "expected host:port"),
        ("unix://", "needs a path"),
        ("udp://x:1", "unknown scheme 'udp'"),
        ("http://x:1", "unknown scheme 'http'"),
        ("://x:1", "unknown scheme ''"),
        ("::1:25", "in brackets"),
        ("tcp://::1:25", "in brackets"),
        ("[::1]25", "[addr]:port"),
        ("[::1]", "[addr]:port"),
        ("[]:25", "[addr]:port"),
        ("x:", "port must be a number from 0 to 65535"),
        ("x:-1", "port must be"),
        ("x:+1", "port must be"),
        ("x:port", "port must be"),
        ("x:65536", "port must be"),
        ("x: 25", "port must be"),
        ("[::1]:", "port must be"),
        ("[::1]:25:1", "port must be"),
    ],
)
def test_bad_addresses_say_why(text, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_address(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["x:\u00b2", "x:\u0663", "x:" + "1" * 5000])
def test_ports_are_ascii_digits_with_a_short_reason(text):
    with pytest.raises(ValueError, match="port must be a number from 0 to 65535"):
        parse_address(text)


@pytest.mark.parametrize(
    "address, text",
    [
        (Address("tcp", "127.0.0.1", 80), "tcp://127.0.0.1:80"),
        (Address("tcp", "::1", 80), "tcp://[::1]:80"),
        (Address("tcp", "localhost", 0), "tcp://localhost:0"),
        (Address("unix", path="/run/a.sock"), "unix:///run/a.sock"),
    ],
)
def test_addresses_print_as_urls(address, text):
    assert str(address) == text


HOSTS = (
    st.ip_addresses().map(str)
    | st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True)
    | st.text(st.characters(blacklist_characters="[]", blacklist_categories=("Cs", "Z", "Cc")), min_size=1, max_size=20)
)
PATHS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(lambda p: p.strip() == p)


@given(HOSTS, st.integers(0, 65535))
def test_a_printed_tcp_address_parses_back(host, port):
    address = Address("tcp", host, port)
    assert parse_address(str(address)) == address
    if ":" not in host:
        assert parse_address(f"{host}:{port}") == address


@given(PATHS)
def test_a_printed_unix_address_parses_back(path):
    address = Address("unix", path=path)
    assert parse_address(str(address)) == address


@given(st.text(max_size=40))
def test_any_text_is_an_address_or_a_value_error(text):
    try:
        address = parse_address(text)
    except ValueError:
        return
    assert address.kind in ("tcp", "unix")
    if address.kind == "tcp":
        assert address.host and 0 <= address.port <= 65535 and address.path == ""
    else:
        assert address.path and address.host == "" and address.port == 0


# -- peers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, addr, text",
    [
        (socket.AF_INET, ("10.0.0.1", 5), "10.0.0.1:5"),
        (socket.AF_INET6, ("::1", 5, 0, 0), "[::1]:5"),
        (socket.AF_INET6, ("::ffff:10.0.0.1", 65535, 0, 0), "[::ffff:10.0.0.1]:65535"),
        (socket.AF_UNIX, "/run/peer.sock", "/run/peer.sock"),
        (socket.AF_UNIX, "", ""),
        (socket.AF_UNIX, None, ""),
        (socket.AF_UNIX, b"\x00abstract", "\x00abstract"),
        (socket.AF_UNIX, b"bad\xff", "bad\ufffd"),
    ],
)
def test_peer_names(family, addr, text):
    assert format_peer(family, addr) == text


def test_the_peer_of_a_real_connection_is_named_as_ip_and_port():
    with bind(Address("tcp", "127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as client:
        listener.setblocking(True)
        conn, addr = listener.accept()
        with conn:
            assert format_peer(conn.family, addr) == f"127.0.0.1:{client.getsockname()[1]}"


# -- binding ----------------------------------------------------------------------------------


def test_bind_gives_a_nonblocking_listening_socket_on_the_asked_address():
    with bind(Address("tcp", "127.0.0.1", 0), backlog=16) as sock:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert sock.getblocking() is False
        with socket.create_connection((host, port)):
            pass  # the kernel accepts into the queue


def test_a_busy_address_is_an_os_error():
    with bind(Address("tcp", "127.0.0.1", 0)) as first:
        port = first.getsockname()[1]
        with pytest.raises(OSError) as info:
            bind(Address("tcp", "127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE


def test_a_listener_reports_the_port_actually_bound():
    sock = bind(Address("tcp", "127.0.0.1", 0))
    with sock:
        listener = Listener("s", Address("tcp", "127.0.0.1", 0), sock, b"\n", 100, 4096)
        assert listener.is_tcp and listener.bound == f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def test_a_unix_listener_binds_replaces_a_stale_socket_and_is_unlinked(short_dir):
    address = Address("unix", path=str(short_dir / "a.sock"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(address.path)
    stale.close()  # the file stays: a dead server's socket
    with bind(address) as sock:
        listener = Listener("s", address, sock, b"", 100, 4096)
        assert not listener.is_tcp and listener.bound == f"unix://{address.path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(address.path)
        unlink_unix(address)
        assert not os.path.exists(address.path)
    unlink_unix(address)  # already gone: no error
    unlink_unix(Address("tcp", "127.0.0.1", 0))  # not a file: nothing to do


def test_a_live_unix_socket_is_not_taken_over(short_dir):
    path = str(short_dir / "live.sock")
    with bind(Address("unix", path=path)):
        with pytest.raises(OSError) as info:
            remove_stale_socket(path)
        assert info.value.errno == errno.EADDRINUSE and os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_not_removed(short_dir):
    path = short_dir / "data"
    path.write_text("keep me")
    with pytest.raises(OSError) as info:
        bind(Address("unix", path=str(path)))
    assert info.value.errno == errno.EEXIST and path.read_text() == "keep me"
    remove_stale_socket(str(short_dir / "missing.sock"))  # nothing there: nothing to do


# -- reloading framing on bound sockets -------------------------------------------------------


def server(name: str, addr: str, delimiter: bytes = b"\r\n", **settings: object) -> SimpleNamespace:
    base = dict(max_message_size=1024, read_buf_size=4096, idle_timeout=0.0, read_timeout=60.0, write_timeout=30.0, keepalive=0.0)
    base.update(proxy_protocol="off", proxy_allow_from=())
    return SimpleNamespace(name=name, addr=parse_address(addr), delimiter=delimiter, **{**base, **settings})


def test_for_server_takes_the_framing_and_drops_the_read_timeout_in_stream_mode():
    sock = socket.socket()
    with sock:
        lines = Listener.for_server(server("a", "127.0.0.1:1", idle_timeout=5.0, keepalive=75.0), sock)
        assert (lines.name, lines.delimiter, lines.max_message_size, lines.read_size, lines.keepalive) == ("a", b"\r\n", 1024, 4096, 75.0)
        assert lines.timeouts == Timeouts(5.0, 60.0, 30.0) and lines.sock is sock
        stream = Listener.for_server(server("b", "127.0.0.1:2", delimiter=b""), sock)
        assert stream.timeouts == Timeouts(0.0, 0.0, 30.0)  # no message to be partly read
        edge = Listener.for_server(server("c", "127.0.0.1:3", proxy_protocol="v2", proxy_allow_from=("net",)), sock)
        assert (edge.proxy, edge.proxy_allow, lines.proxy) == ("v2", ("net",), "off")


def test_rebind_keeps_the_sockets_and_takes_the_new_framing():
    a, b = socket.socket(), socket.socket()
    with a, b:
        old = [Listener.for_server(server("a", "127.0.0.1:1"), a), Listener.for_server(server("b", "[::1]:2"), b)]
        new = rebind(old, [server("b", "tcp://[::1]:2", delimiter=b"\n"), server("a", "127.0.0.1:1", max_message_size=7)])
        assert [(lst.name, lst.sock, lst.delimiter, lst.max_message_size) for lst in new] == [("b", b, b"\n", 1024), ("a", a, b"\r\n", 7)]


@pytest.mark.parametrize(
    "servers",
    [
        [("a", "127.0.0.1:9")],  # an address changed
        [("c", "127.0.0.1:1")],  # a name changed
        [("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")],  # a server added
        [],
    ],
)
def test_rebind_refuses_new_names_or_addresses(servers):
    sock = socket.socket()
    with sock:
        old = [Listener.for_server(server("a", "127.0.0.1:1"), sock)]
        with pytest.raises(ValueError, match="restart"):
            rebind(old, [server(name, addr) for name, addr in servers])


# -- unsent bytes -----------------------------------------------------------------------------


def test_unsent_bytes_counts_what_the_peer_has_not_taken():
    mine, peer = socket.socketpair()
    with mine, peer:
        assert unsent_bytes(mine) == 0
        mine.sendall(b"x" * 1000)
        assert unsent_bytes(mine) >= 1000  # a unix socket counts the buffers its peer has not read
        assert peer.recv(2000) == b"x" * 1000
        assert unsent_bytes(mine) == 0


def test_unsent_bytes_is_zero_when_the_kernel_cannot_tell():
    with bind(Address("tcp", "127.0.0.1", 0)) as listener:
        assert unsent_bytes(listener) == 0  # the ioctl fails (EINVAL) on a listening socket
