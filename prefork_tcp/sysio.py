"""The event loop's system calls on connections, by file descriptor where it can.

- ``recv(fd, size)`` returns the bytes read (``b""`` at end of stream);
- ``send(fd, data)`` returns how many bytes the kernel took;
- ``accept(listener, fd, family, type_, proto, nodelay)`` returns a non-blocking socket
  for the next connection waiting on ``listener`` (whose descriptor is ``fd``), with
  ``TCP_NODELAY`` set when ``nodelay`` is true, and its peer's address as text
  (``sockets.format_peer``). Should ``TCP_NODELAY`` fail, the connection is closed and
  the error raised, as for one that was gone before it was accepted.

They raise ``OSError`` as the socket methods do: ``BlockingIOError`` when there is
nothing to read, no room to write or no connection waiting, and so on. Every socket they
are used on is non-blocking.

``recv`` and ``send`` make the ``read`` and ``write`` system calls, which on a socket are
``recv`` and ``send`` without flags. As plain Python they are ``os.read`` and
``os.write``, which take their arguments the fast way (``socket.recv`` and
``socket.send`` do not); ``accept`` is the socket's own, then ``setblocking(False)``
(and ``setsockopt``).

In the compiled core they are C (``csysio.pxd``), and they save what CPython spends around
a small read or write, more than a redis-server spends on a whole request:

- they keep the GIL: the call cannot block, so another thread would only be handed the
  GIL and hand it back;
- a read of up to 4 KiB lands in a spare buffer kept for the next read and is copied out
  into a bytes object of its size, where CPython allocates ``size`` bytes (64 KiB by
  default) and shrinks them to what was read. A longer read takes the spare buffer
  itself, shrunk, as CPython would;
- ``accept4`` hands over the descriptor non-blocking and close-on-exec, so the socket
  object is made with ``SOCK_NONBLOCK`` in its type and needs no ``ioctl``, the listener
  is reached by its descriptor without a call of its ``fileno()``, ``TCP_NODELAY`` is
  set without a Python call, and the peer's address is written as text without a tuple
  and a format string.

tests/test_sysio.py holds both to the same results.
"""

from __future__ import annotations

import _socket
import os

from .sockets import format_peer

try:
    import cython
except ImportError:  # plain Python without Cython installed
    from . import nocython as cython

if cython.compiled:
    from cython.cimports.prefork_tcp.csysio import c_accept, c_recv, c_send

    @cython.ccall
    def recv(fd: cython.int, size: cython.Py_ssize_t) -> bytes:
        return c_recv(fd, size)

    @cython.ccall
    def send(fd: cython.int, data: object) -> cython.Py_ssize_t:
        return c_send(fd, data)

    @cython.ccall
    def accept(listener: object, fd: cython.int, family: cython.int, type_: cython.int, proto: cython.int, nodelay: cython.bint) -> tuple:
        return c_accept(fd, _socket.socket, family, type_, proto, nodelay)

else:
    recv = os.read
    send = os.write

    def accept(listener: _socket.socket, fd: int, family: int, type_: int, proto: int, nodelay: bool) -> tuple[_socket.socket, str]:
        new, addr = listener._accept()  # type: ignore[attr-defined]  # socket's C-level accept
        sock = _socket.socket(family, type_, proto, new)
        try:
            sock.setblocking(False)
            if nodelay:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            raise
        return sock, format_peer(family, addr)
