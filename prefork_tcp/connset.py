"""The connections one worker serves: their sockets in epoll, timeouts, closing, stopping.

``ConnectionSet`` is the part of a worker's loop that is not about messages: it takes new
connections from the ``Acceptor``, keeps each socket's epoll interest in step with its
``Connection``, ends connections (CLOSE queued, output flushed, FIN, a short linger for
the client's own FIN), closes those whose timeouts ran out, and stops the worker.
``eventloop.EventLoop`` adds the messages: reading, framing, delivering, writing.
"""

from __future__ import annotations

import errno
import logging
import select
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass

from . import proxyproto
from . import timeouts as timeout_rules
from .accepting import Acceptor
from .connection import Connection, Event
from .events import TcpEvent
from .logs import Throttle, printable
from .scoreboard import MAX_SERVERS, Closed, Scoreboard, SlotWriter, State
from .signals import SignalPipe
from .sockets import Listener, unsent_bytes
from .ticker import Ticker

log = logging.getLogger("prefork_tcp.worker")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_TROUBLE = select.EPOLLERR | select.EPOLLHUP
CONNECTED = TcpEvent.CONNECTED
CLOSE = TcpEvent.CLOSE

#: How long a gracefully closed connection waits for the client's FIN after ours.
LINGER = 2.0
#: How long a connection to a server with ``proxy_protocol`` has to send its header.
HEADER_TIMEOUT = 5.0


#: Socket errors that mean the client went away (reset, or gone while we wrote).
_CLIENT_GONE = frozenset((errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH))


#: Why connections end, read once here for this module and ``eventloop.py``: on Python
#: 3.10 and 3.11, reading an enum member from its class goes through the enum
#: metaclass's ``__getattr__`` hook, about 100 ns, and these are read per connection.
_BY_CLIENT, _BY_APP, _BY_ERROR, _BY_LIMIT = Closed.CLIENT, Closed.APP, Closed.ERROR, Closed.LIMIT


def lost(exc: OSError) -> Closed:
    """Why a connection whose read or write raised ``exc`` ended: the client, or an error."""
    return _BY_CLIENT if exc.errno in _CLIENT_GONE else _BY_ERROR


@dataclass(eq=False)
class AwaitingHeader:
    """A connection accepted on a PROXY server, before its header is whole."""

    conn: Connection
    mode: str
    deadline: float
    received: bytes = b""


class ConnectionSet:
    """A worker's connections and everything around them but their messages."""

    def __init__(
        self,
        listeners: list[Listener],
        signals: SignalPipe,
        drain_timeout: float,
        high_water: int,
        slot: SlotWriter | None = None,
        max_connections: int = 0,
    ) -> None:
        self.epoll = select.epoll()
        #: Events to deliver, in order: (connection, event, body).
        self.events: deque[Event] = deque()
        self.conns: dict[int, Connection] = {}
        #: Framing rules by server name, for connections adopted from other workers.
        self.servers = {lst.name: lst for lst in listeners}
        #: Each server's number in the scoreboard's counters (the master knows the order).
        self.server_numbers = {lst.name: i for i, lst in enumerate(listeners[:MAX_SERVERS])}
        self.slot = slot or SlotWriter(Scoreboard(1), 0)
        self.signals = signals
        self.drain_timeout = drain_timeout
        self.high_water = high_water
        self.lingering: set[Connection] = set()
        self.stopping = False
        self.quick = False
        self.stopped = False
        self.stop_deadline = 0.0
        #: Set whenever the loop has rare duties (``_attend``): stopping, lingering
        #: closes, paused accepts, and what subclasses add.
        self.attention = False
        self.warnings = Throttle(log)
        #: Listeners found readable in the last poll, accepted from in ``_attend``.
        self.accept_ready: list[int] = []
        self.acceptor = Acceptor(listeners, self.epoll, self.slot, max_connections, high_water, self.warnings)
        self.epoll.register(signals.fileno(), EPOLLIN)
        # Timeouts: a sweep every ``interval``, woken by a timerfd (no clock read per event).
        self.clock = time.monotonic()
        interval = timeout_rules.sweep_interval(lst.timeouts for lst in listeners)
        if any(lst.proxy != "off" for lst in listeners):  # headers have HEADER_TIMEOUT to arrive
            interval = min(interval or 1.0, 1.0)
        #: Connections accepted that have not sent their PROXY header yet, by descriptor.
        self.headers: dict[int, AwaitingHeader] = {}
        self.ticker = Ticker(interval) if interval else None
        if self.ticker is not None:
            self.epoll.register(self.ticker.fileno(), EPOLLIN)
        self.acceptor.sync()

    # -- rare duties and descriptors other than connections --------------------------------

    def _attend(self) -> float | None:
        """The loop's rare duties before it waits; return the wait's timeout (None: stopped)."""
        if self.accept_ready:
            ready, self.accept_ready = self.accept_ready, []
            for fd in ready:
                if fd in self.acceptor.listeners:
                    self._accept(fd)
        if self.lingering or self.acceptor.resume_at:
            self._expire()
        if self.stopping and self._drained():
            self._shut_down()  # CLOSE is queued for what is left: delivered before the loop ends
            if not self.events:
                return None
        self.attention = bool(self.stopping or self.lingering or self.acceptor.resume_at)
        return self._poll_timeout()

    def _wake(self, fd: int, mask: int) -> None:
        """A descriptor other than a connection is ready: a listener, signals, the ticker."""
        if fd in self.acceptor.listeners:
            # Accepted in ``_attend``, after the rest of this batch: a stop that came with it
            # (the channel, a signal) is seen before a new connection is taken.
            self.accept_ready.append(fd)
            self.attention = True
        elif fd == self.signals.fileno():
            self._read_signals()
        elif self.ticker is not None and fd == self.ticker.fileno():
            self.ticker.drain()
            self._sweep()
        elif fd in self.headers:
            self._read_header(self.headers[fd])

    def _accept(self, fd: int) -> None:
        listener = self.acceptor.listeners[fd]
        new = self.acceptor.accept(fd, len(self.conns) + len(self.headers), self.clock)
        if self.acceptor.resume_at:
            self.attention = True
        if not new:
            return
        number = self.server_numbers.get(listener.name, -1)
        self.slot.accepted(number, len(new))
        if listener.proxy != "off":  # open once its header is read
            for conn in new:
                self._await_header(conn, listener)
            return
        conns, register, append = self.conns, self.epoll.register, self.events.append
        for conn in new:
            conns[conn.fd] = conn
            register(conn.fd, EPOLLIN)
            conn.watched(EPOLLIN)
            append((conn, CONNECTED, b""))
        self.slot.set_connections(len(conns))
        self.slot.opened(number, len(new))

    def _added(self, conn: Connection) -> None:
        """A connection joined ``conns`` (its header read, adopted, or back from a handoff): publish the counts."""
        self.slot.set_connections(len(self.conns))
        self.slot.opened(self.server_numbers.get(conn.server, -1))

    def _removed(self, conn: Connection | None = None) -> None:
        """A connection left this worker (``conn``, taken out of ``conns`` here; None: one
        that never joined them): publish the counts, accept again if it was full."""
        if conn is not None and self.conns.pop(conn.fd, None) is not None:
            self.slot.left(self.server_numbers.get(conn.server, -1))
        count = len(self.conns)
        self.slot.set_connections(count)
        self.acceptor.removed(count + len(self.headers))

    # -- the PROXY header (SPEC §2): read before CONNECTED, never delivered ------------------

    def _await_header(self, conn: Connection, listener: Listener) -> None:
        if listener.is_tcp and not proxyproto.allowed(conn.remote, listener.proxy_allow):
            self._refuse_header(conn, f"peer {conn.remote} is not in proxy_allow_from")
            return
        self.headers[conn.fd] = AwaitingHeader(conn, listener.proxy, self.clock + HEADER_TIMEOUT)
        self.epoll.register(conn.fd, EPOLLIN)

    def _read_header(self, waiting: AwaitingHeader) -> None:
        """Read what a connection sent before its PROXY header is whole. Bytes after the
        header stay in the socket: the loop reads them as the first message."""
        conn = waiting.conn
        sock = conn.sock
        assert sock is not None
        try:
            peeked = sock.recv(4096, socket.MSG_PEEK)
            if not peeked:
                raise proxyproto.ProxyError("closed before its PROXY header was whole")
            result = proxyproto.parse(waiting.received + peeked, waiting.mode)
            # Take what belongs to the header; for a header not whole yet, all of it (a
            # peek alone would leave the socket readable, and the loop spinning).
            taken = sock.recv(len(peeked) if result is None else result[1] - len(waiting.received))
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, proxyproto.ProxyError) as exc:
            self._refuse_header(conn, getattr(exc, "strerror", None) or str(exc))
            return
        waiting.received += taken
        if result is None:
            return
        header, _ = result
        del self.headers[conn.fd]
        if header.source:  # LOCAL and UNKNOWN name no client: the peer is the balancer itself
            conn.remote = header.source
        self.conns[conn.fd] = conn
        conn.watched(EPOLLIN)
        self.events.append((conn, CONNECTED, b""))
        self._added(conn)

    def _refuse_header(self, conn: Connection, why: str, counted: bool = True) -> None:
        """Close a connection that sent no valid PROXY header in time: no CONNECTED, no CLOSE
        (``counted``: in the metrics' refused headers; not when the worker stops)."""
        self.headers.pop(conn.fd, None)
        self.warnings.warn(
            "proxy", "closing connection from %s (server %s) without CONNECTED: %s", printable(conn.remote) or "-", conn.server, why
        )
        sock, conn.sock = conn.sock, None
        if sock is not None:
            sock.close()  # out of the epoll set with it
        conn.detached()
        if counted:
            self.slot.header_refused()
        self._removed()

    def _expire_headers(self, now: float) -> None:
        for waiting in [w for w in self.headers.values() if w.deadline <= now]:
            self._refuse_header(waiting.conn, f"no PROXY header within {HEADER_TIMEOUT:g}s")

    # -- timeouts ---------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close the connections whose idle, read or write timeout ran out."""
        self.clock = now = time.monotonic()
        if self.headers:
            self._expire_headers(now)
        expired = timeout_rules.expired
        for conn in list(self.conns.values()):
            if conn.sock is not None and conn.timeouts:
                if conn.out_size:
                    # Output waits here; the kernel's own queue may still be draining
                    # (EPOLLOUT comes only once a third of its buffer is free): that is progress.
                    queued = unsent_bytes(conn.sock)
                    if queued < conn.kernel_queued:
                        conn.active = conn.wrote = True
                    conn.kernel_queued = queued
                which = expired(conn, now)
                if which is not None:
                    self._timed_out(conn, which)

    def _timed_out(self, conn: Connection, which: str) -> None:
        limit = getattr(conn.timeouts, which.partition("_")[0])
        log.warning(
            "closing connection %s (server %s, remote %s): %s (%gs) ran out",
            conn.uuid,
            conn.server,
            printable(conn.remote) or "-",
            which,
            limit,
        )
        if which == "write_timeout":
            self._drop(conn, Closed.TIMEOUT)  # its output cannot be delivered
        else:
            self._finish(conn, Closed.TIMEOUT)

    # -- ending connections ------------------------------------------------------------------

    def close_by_uuid(self, uuid: str) -> bool:
        """Close this worker's connection ``uuid`` (its CLOSE follows); False if it is not here."""
        for conn in self.conns.values():
            if conn.uuid == uuid and conn.open:
                self._finish(conn, _BY_APP)
                return True
        return False

    def _finish(self, conn: Connection, why: Closed) -> None:
        """End a connection gracefully: CLOSE is queued, output is flushed, then FIN."""
        if not conn.finish():
            return
        self.slot.closed(why)
        self.events.append((conn, CLOSE, b""))
        conn.closing_down()
        if not conn.out_size:  # else it is on the flush list or waits for EPOLLOUT already
            self._close_gracefully(conn)

    def _drop(self, conn: Connection, why: Closed) -> None:
        """End a connection at once (reset, write error, quick stop), discarding output."""
        if conn.finish():
            self.slot.closed(why)
            self.events.append((conn, CLOSE, b""))
        conn.discard_output()
        self._close_socket(conn)

    def _close_gracefully(self, conn: Connection) -> None:
        if conn.eof or self.stopping:
            self._close_socket(conn)
            return
        # Send our FIN, then read until the client's so unread input can't turn it into RST.
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]  # an open connection has its socket
        except OSError:
            self._close_socket(conn)
            return
        conn.linger_until = time.monotonic() + LINGER
        self.lingering.add(conn)
        self.attention = True
        self._set_mask(conn, EPOLLIN)

    def _close_socket(self, conn: Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        self.lingering.discard(conn)
        # No EPOLL_CTL_DEL: closing the last descriptor of the socket removes it from the
        # epoll set, one system call fewer per connection. Not so for an adopted socket,
        # which the master may still hold until it has our acknowledgement.
        if conn.shared and conn.mask:
            self.epoll.unregister(conn.fd)
        conn.detached()  # a closed connection has nothing to flush
        sock.close()
        self._removed(conn)

    def _forget(self, conn: Connection) -> None:
        """Stop watching a connection's socket (it is being handed off)."""
        if conn.mask:
            self.epoll.unregister(conn.fd)
            conn.watched(0)
        self._removed(conn)

    def _update_mask(self, conn: Connection) -> None:
        mask = EPOLLIN if conn.wants_read else 0
        if conn.out_size:
            mask |= EPOLLOUT
        self._set_mask(conn, mask)

    def _set_mask(self, conn: Connection, mask: int) -> None:
        if mask == conn.mask:
            return
        if not conn.mask:
            self.epoll.register(conn.fd, mask)
        elif not mask:
            self.epoll.unregister(conn.fd)
        else:
            self.epoll.modify(conn.fd, mask)
        conn.watched(mask)

    def _expire(self) -> None:
        now = time.monotonic()
        if self.lingering:
            for conn in [c for c in self.lingering if c.linger_until <= now]:
                self._close_socket(conn)
        self.acceptor.expire(now)

    def _poll_timeout(self) -> float:
        deadlines = [c.linger_until for c in self.lingering]
        if self.acceptor.resume_at:
            deadlines.append(self.acceptor.resume_at)
        if self.stopping:
            deadlines.append(self.stop_deadline)
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    # -- stopping --------------------------------------------------------------------------

    def _read_signals(self) -> None:
        for signum in self.signals.drain():
            if signum == signal.SIGTERM:
                self.begin_stop(quick=False)
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self.begin_stop(quick=True)

    def begin_stop(self, quick: bool) -> None:
        """Stop accepting and end every connection; ``quick`` drops unsent output."""
        if self.stopping and (self.quick or not quick):
            return
        if not self.stopping:
            self.stop_deadline = time.monotonic() + self.drain_timeout
            self._close_listeners()
            self.slot.set_state(State.RETIRING)
        self.stopping = True
        self.attention = True
        self.quick = quick
        for conn in list(self.conns.values()):
            if quick:
                self._drop(conn, Closed.SHUTDOWN)
            elif conn.open:
                self._finish(conn, Closed.SHUTDOWN)
        for conn in list(self.lingering):
            self._close_socket(conn)
        for waiting in list(self.headers.values()):  # not CONNECTED yet: nothing to finish
            self._refuse_header(waiting.conn, "the worker stops", counted=False)

    def _close_listeners(self) -> None:
        """Stop accepting: this worker's copies of the listening sockets are closed."""
        self.acceptor.close()

    def _drained(self) -> bool:
        return not self.conns or time.monotonic() >= self.stop_deadline

    def _shut_down(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn, Closed.SHUTDOWN)
        self.stopped = True
