"""Listening addresses: parsing them, binding them in the master, naming peers."""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import socket
import stat
import sys
import termios
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .timeouts import NONE as NO_TIMEOUTS
from .timeouts import Timeouts

#: Length of the accept queue asked of the kernel (capped by net.core.somaxconn).
BACKLOG = 2048


@dataclass(frozen=True)
class Address:
    """Where a server listens: a TCP host and port, or a unix socket path."""

    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Return the ``Address`` for ``tcp://host:port``, ``host:port``, ``[v6]:port`` or ``unix:///path``.

    Raises ``ValueError`` with a short reason.
    """
    text = text.strip()
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path:
            raise ValueError("a unix socket address needs a path, as in unix:///run/app.sock")
        return Address("unix", path=path)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "tcp":
            raise ValueError(f"unknown scheme {scheme!r}: use tcp:// or unix://")
        text = rest
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError("an IPv6 address is written [addr]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected host:port, tcp://host:port or unix:///path")
        if ":" in host:
            raise ValueError("write an IPv6 address in brackets: [addr]:port")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be a number from 0 to 65535")
    return Address("tcp", host=host or "0.0.0.0", port=int(port_text))


class ServerSettings(Protocol):
    """What a listener takes from a server's config (``config.ServerConfig``, frozen)."""

    @property
    def name(self) -> str: ...
    @property
    def addr(self) -> Address: ...
    @property
    def delimiter(self) -> bytes: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def read_buf_size(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def write_timeout(self) -> float: ...
    @property
    def keepalive(self) -> float: ...
    @property
    def proxy_protocol(self) -> str: ...
    @property
    def proxy_allow_from(self) -> tuple[Any, ...]: ...


@dataclass
class Listener:
    """A bound listening socket and the framing rules of its server."""

    name: str
    address: Address
    sock: socket.socket
    delimiter: bytes
    max_message_size: int
    read_size: int
    timeouts: Timeouts = NO_TIMEOUTS
    #: TCP keepalive idle time of accepted sockets in seconds (0: off).
    keepalive: float = 0.0
    #: Passed by systemd (socket activation): its unix socket file is systemd's, not ours.
    inherited: bool = False
    #: The PROXY header each connection must send first ("off", "v1", "v2", "auto"), and
    #: the networks (``ipaddress``) it is taken from.
    proxy: str = "off"
    proxy_allow: tuple[Any, ...] = ()

    @classmethod
    def for_server(cls, server: ServerSettings, sock: socket.socket, inherited: bool = False) -> Listener:
        """Return the listener of ``server`` on the bound socket ``sock``."""
        timeouts = Timeouts(server.idle_timeout, server.read_timeout if server.delimiter else 0.0, server.write_timeout)
        return cls(
            server.name,
            server.addr,
            sock,
            server.delimiter,
            server.max_message_size,
            server.read_buf_size,
            timeouts,
            server.keepalive,
            inherited,
            server.proxy_protocol,
            server.proxy_allow_from,
        )

    @property
    def is_tcp(self) -> bool:
        return self.address.kind == "tcp"

    @property
    def bound(self) -> str:
        """The address actually bound (with the real port when 0 was asked for)."""
        if not self.is_tcp:
            return str(self.address)
        host, port = self.sock.getsockname()[:2]
        return str(Address("tcp", host=host, port=port))


class BindError(Exception):
    """A listening socket could not be created; the message names server and address."""


def bind(address: Address, backlog: int = BACKLOG) -> socket.socket:
    """Return a non-blocking listening socket bound to ``address``, with an accept queue of ``backlog``."""
    if address.kind == "unix":
        return _bind_unix(address.path, backlog)
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return _listen(sock, sockaddr, backlog)


def _bind_unix(path: str, backlog: int) -> socket.socket:
    remove_stale_socket(path)
    return _listen(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path, backlog)


def _listen(sock: socket.socket, sockaddr: Any, backlog: int) -> socket.socket:
    """Bind and listen non-blocking, closing the socket if either fails."""
    try:
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def remove_stale_socket(path: str) -> None:
    """Unlink a unix socket left by a dead server; refuse one a live server answers on, or a
    file that is not a socket (OSError)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # left by a server that is gone
        except FileNotFoundError:
            pass
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening there", path)


def unlink_unix(address: Address) -> None:
    """Remove a unix socket file the master created, if it is still there."""
    if address.kind == "unix":
        unlink_path(address.path)


def unlink_path(path: str) -> None:
    """Remove a file if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def format_peer(family: int, addr: object) -> str:
    """Return RoadRunner's text for a peer: ``ip:port``, ``[v6]:port``, or a unix peer name."""
    if family == socket.AF_INET:
        return f"{addr[0]}:{addr[1]}"  # type: ignore[index]  # (host, port, ...) for IP families
    if family == socket.AF_INET6:
        return f"[{addr[0]}]:{addr[1]}"  # type: ignore[index]  # (host, port, ...) for IP families
    if isinstance(addr, bytes):
        return addr.decode("utf-8", "replace")
    return addr or ""  # type: ignore[return-value]  # a unix peer name is str


def rebind(listeners: list[Listener], servers: Iterable[ServerSettings]) -> list[Listener]:
    """Return listeners with new framing settings on the sockets already bound.

    Raises ValueError when the servers' names or addresses changed: those need a restart.
    """
    servers = list(servers)
    by_name = {lst.name: lst for lst in listeners}
    if {(s.name, str(s.addr)) for s in servers} != {(lst.name, str(lst.address)) for lst in listeners}:
        raise ValueError("names and addresses cannot change on reload; restart the server")
    return [Listener.for_server(s, by_name[s.name].sock, by_name[s.name].inherited) for s in servers]


def unsent_bytes(sock: _socket.socket) -> int:
    """Bytes the kernel holds for a socket that its peer has not acknowledged (SIOCOUTQ)."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"), sys.byteorder)
    except OSError:
        return 0
