"""The event loop's reads and writes (``prefork_tcp/sysio.py``), compiled and plain alike,
over real sockets."""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import struct
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp import sysio
from prefork_tcp.compiled import PACKAGE


def plain_module() -> ModuleType:
    """``sysio.py`` loaded as plain Python, beside whatever the package runs."""
    spec = importlib.util.spec_from_file_location("prefork_tcp.sysio_plain", PACKAGE / "sysio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLAIN = plain_module()
#: The implementation the package runs, and the plain one when that is compiled.
IMPLEMENTATIONS = {"running": sysio} | ({} if sysio.__file__.endswith(".py") else {"plain": PLAIN})


@pytest.fixture(params=list(IMPLEMENTATIONS))
def io(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    client.settimeout(10)
    yield server, client
    server.close()
    client.close()


def test_plain_python_is_the_os_calls():
    assert PLAIN.recv is __import__("os").read and PLAIN.send is __import__("os").write


def test_nothing_to_read_is_blocking_io_error(io, pair):
    server, _ = pair
    with pytest.raises(BlockingIOError):
        io.recv(server.fileno(), 100)


def test_end_of_stream_is_empty_bytes(io, pair):
    server, client = pair
    client.shutdown(socket.SHUT_WR)
    assert io.recv(server.fileno(), 100) == b""


def test_a_reset_is_connection_reset_error(io):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    with pytest.raises(ConnectionResetError):
        io.recv(server.fileno(), 100)
    with pytest.raises(OSError) as caught:  # the error was reported once; the peer is gone
        io.send(server.fileno(), b"x")
    assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)
    server.close()
    listener.close()


def test_a_read_never_returns_more_than_asked(io, pair):
    server, client = pair
    client.sendall(b"abcdef")
    assert io.recv(server.fileno(), 4) == b"abcd"
    assert io.recv(server.fileno(), 4) == b"ef"


def test_send_returns_what_the_kernel_took_and_then_blocking_io_error(io, pair):
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunk = b"z" * 65536
    taken = io.send(server.fileno(), chunk)
    assert 0 < taken <= len(chunk)
    with pytest.raises(BlockingIOError):
        while True:
            io.send(server.fileno(), chunk)


def test_sending_to_a_closed_peer_is_broken_pipe(io, pair):
    server, client = pair
    client.close()
    with pytest.raises(BrokenPipeError):
        io.send(server.fileno(), b"hello")


def test_a_closed_descriptor_is_os_error(io, pair):
    server, _ = pair
    fd = server.detach()
    socket.close(fd)
    with pytest.raises(OSError) as caught:
        io.recv(fd, 10)
    assert caught.value.errno == errno.EBADF


@settings(max_examples=200, deadline=None)
@given(
    reads=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=70_000),  # bytes sent
            st.sampled_from([1, 100, 4095, 4096, 4097, 65536, 100_000]),  # bytes asked for
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_read_keeps_its_bytes_whatever_comes_after(reads):
    """Small reads are copied out of a reused buffer, large ones take it over: no bytes
    object handed out may change afterwards, whatever the sizes read and asked for."""
    for io in IMPLEMENTATIONS.values():
        server, client = socket.socketpair()
        server.setblocking(False)
        got: list[tuple[bytes, bytes]] = []
        for i, (count, size) in enumerate(reads):
            payload = bytes([i % 251]) * count
            client.sendall(payload)
            received = b""
            pieces = []
            while len(received) < count:
                piece = io.recv(server.fileno(), size)
                assert 0 < len(piece) <= size
                pieces.append(piece)
                received += piece
            got.extend((piece, bytes(piece)) for piece in pieces)  # the object, and a copy
            assert received == payload
        assert all(piece == copy for piece, copy in got)
        server.close()
        client.close()


def accepted(io: ModuleType, listener: socket.socket, nodelay: bool = False) -> tuple[socket.socket, str]:
    return io.accept(listener, listener.fileno(), listener.family, listener.type, listener.proto, nodelay)


def test_accept_gives_a_non_blocking_socket_and_the_peer_as_text(io):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        accepted(io, listener)
    client = socket.create_connection(listener.getsockname())
    sock, peer = accepted(io, listener)
    assert peer == f"127.0.0.1:{client.getsockname()[1]}"
    assert sock.gettimeout() == 0.0 and not os.get_blocking(sock.fileno()) and not os.get_inheritable(sock.fileno())
    with pytest.raises(BlockingIOError):
        sock.recv(10)
    client.sendall(b"hi")
    client.settimeout(10)
    sock.settimeout(10)
    assert sock.recv(10) == b"hi"
    for s in (sock, client, listener):
        s.close()


def test_accept_sets_tcp_nodelay_when_asked(io):
    listener = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
    plain, _ = accepted(io, listener)
    quick, _ = accepted(io, listener, nodelay=True)
    assert plain.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    assert quick.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    for s in (plain, quick, *clients, listener):
        s.close()


def test_a_failed_tcp_nodelay_closes_the_connection_and_raises(io):
    # TCP_NODELAY on a unix socket fails as it would on a TCP connection gone bad.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0prefork-tcp-nodelay-{os.getpid()}")
    listener.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        accepted(io, listener, nodelay=True)
    assert set(os.listdir("/proc/self/fd")) <= before  # nothing left open
    client.settimeout(10)
    assert client.recv(10) == b""  # the server's end was closed
    for s in (client, listener):
        s.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_accept_writes_an_ipv6_peer_in_brackets(io):
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    client = socket.create_connection(listener.getsockname()[:2])
    sock, peer = accepted(io, listener)
    assert peer == f"[::1]:{client.getsockname()[1]}"
    for s in (sock, client, listener):
        s.close()


@pytest.mark.parametrize("name", [None, "path", b"\x00abstract-\xff"])
def test_accept_names_a_unix_peer_as_python_does(io, tmp_path, name):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "server"))
    listener.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if name == "path":
        client.bind(str(tmp_path / "client"))
    elif name is not None:
        client.bind(name + str(os.getpid()).encode())
    client.connect(str(tmp_path / "server"))
    sock, peer = accepted(io, listener)
    expected = {None: "", "path": str(tmp_path / "client")}.get(name)  # type: ignore[call-overload]
    if expected is None:  # abstract: the name's bytes, leading NUL included, undecodable ones replaced
        expected = (name + str(os.getpid()).encode()).decode("utf-8", "replace")  # type: ignore[operator]
    assert peer == expected
    for s in (sock, client, listener):
        s.close()
