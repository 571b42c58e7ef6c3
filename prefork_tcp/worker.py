"""A worker's event loop: accept, read, frame, queue events, write answers, close.

The application drives the loop: ``TcpWorker.wait_request()`` takes the next event from
``pump()``, which hands out queued events and, only when none are left, flushes every
answer written since the last poll (one ``send`` per connection) and waits in ``epoll``.
"""

from __future__ import annotations

import _socket
import errno
import logging
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Iterator

from .api import TcpEvent, TcpResponse
from .connection import Connection
from .framing import MessageTooLarge, make_framer
from .scoreboard import Scoreboard, SlotWriter, State
from .signals import SignalPipe
from .sockets import Listener, format_peer
from .uuids import new_uuid

log = logging.getLogger("prefork_tcp.worker")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_TROUBLE = select.EPOLLERR | select.EPOLLHUP
CONNECTED = TcpEvent.CONNECTED
DATA = TcpEvent.DATA
CLOSE = TcpEvent.CLOSE
_EOF = None  # queued after a half-closed connection's last DATA

#: Connections accepted per wake-up of one listener, so one busy listener can't starve the rest.
ACCEPT_BATCH = 64
#: How long a gracefully closed connection waits for the client's FIN after ours.
LINGER = 2.0
#: How long accepting pauses when the process runs out of file descriptors.
ACCEPT_BACKOFF = 0.5
#: A worker holding more than this times the serving workers' average number of
#: connections (plus one) lets the others accept for ACCEPT_YIELD seconds.
FAIR_SHARE = 1.1
ACCEPT_YIELD = 0.005

#: Commands the master writes on a worker's channel.
CMD_STOP = b"T"
CMD_QUIT = b"Q"
CMD_RETIRE = b"H"  # hand every connection over, then exit
#: What a worker writes on its channel once its application waits for the first request.
MSG_READY = b"R"
#: What a worker writes once it has handled its max_jobs events.
MSG_RETIRE_ME = b"J"

Event = tuple[Connection, TcpEvent | None, bytes]


class EventLoop:
    """The event loop of one worker process; see the module docstring."""

    def __init__(
        self,
        listeners: list[Listener],
        channel: socket.socket,
        signals: SignalPipe,
        drain_timeout: float,
        high_water: int,
        slot: SlotWriter | None = None,
        max_jobs: int = 0,
        mark_events: bool = True,
    ) -> None:
        self.epoll = select.epoll()
        self.events: deque[Event] = deque()
        #: Connections answered since the last flush.
        self.dirty: list[Connection] = []
        self.conns: dict[int, Connection] = {}
        self.listeners = {lst.sock.fileno(): lst for lst in listeners}
        #: Framing rules by server name, for connections adopted from other workers.
        self.servers = {lst.name: lst for lst in listeners}
        self.slot = slot or SlotWriter(Scoreboard(1), 0)
        #: After this many events the worker asks to retire (-1: never).
        self.max_jobs = max_jobs if max_jobs > 0 else -1
        #: Whether each event's number goes into the scoreboard as it starts (``exec_ttl``
        #: needs it); the count of events handled is published at every wait regardless.
        self.mark_events = mark_events
        self.channel = channel
        channel.setblocking(False)
        self.signals = signals
        self.drain_timeout = drain_timeout
        self.high_water = high_water
        self.lingering: set[Connection] = set()
        self.ready = False
        self.stopping = False
        self.quick = False
        self.stopped = False
        self.retiring = False
        self.stop_deadline = 0.0
        self.accept_resume = 0.0
        #: Set whenever one of the four above needs the loop's attention (``_attend``).
        self.attention = False
        self.epoll.register(channel.fileno(), EPOLLIN)
        self.epoll.register(signals.fileno(), EPOLLIN)
        self._watch_listeners()

    # -- what TcpWorker calls -------------------------------------------------------

    def pump(self) -> Iterator[Event]:
        """Yield the events to deliver, in order, waiting for them; return once stopped.

        The worker's hot loop, written as one generator so that what it touches per
        event lives in local variables: deliver queued events; when none are left, flush
        every answer written since the last poll (one ``send`` per connection), wait in
        ``epoll`` and turn what the sockets have into events: queued, or, for a read that
        is one whole message while nothing is queued, handed out at once.  Rare duties
        (retiring, stopping, lingering closes, paused accepts) are in ``_attend``.
        """
        self.ready = True
        self.slot.set_state(State.SERVING)
        self._tell_master(MSG_READY)
        events, dirty, conns, high_water = self.events, self.dirty, self.conns, self.high_water
        popleft, append = events.popleft, events.append
        activity, activity_index = self.slot.signed, self.slot.activity_index
        max_jobs, mark_events = self.max_jobs, self.mark_events
        handled = 0
        epoll_poll = self.epoll.poll
        data_event, length = DATA, len  # locals: cheaper to load than globals
        while True:
            while events:
                item = popleft()
                conn, event, _ = item
                if event is data_event:
                    if not conn.open:
                        continue
                    if conn.held or conn.out_size >= high_water:
                        conn.hold(item)  # a slow reader: wait until its output drains
                        continue
                elif event is _EOF:
                    if conn.open and not conn.hold(item):
                        self._finish(conn)
                    continue
                handled += 1
                if mark_events:
                    activity[activity_index] = handled  # the scoreboard: event number `handled` in progress
                if handled == max_jobs:
                    self._tell_master(MSG_RETIRE_ME)
                yield item
            if dirty:
                for conn in dirty:
                    out = conn.out
                    if not out or conn.sock is None:  # sent already, or closed (an answer may come after)
                        continue
                    # Flush (``_send``, inlined): one send per connection.
                    data = b"".join(out)  # a single chunk comes back as it is
                    out.clear()
                    conn.out_size = 0
                    try:
                        sent = conn.sock.send(data)  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError:
                        self._drop(conn)
                        continue
                    if sent != length(data) or not conn.plain:
                        self._sent(conn, data, sent)
                dirty.clear()
                if events:  # flushing released events held back for a slow reader
                    continue
            timeout: float | None = -1
            if self.attention:
                timeout = self._attend()
                if timeout is None:
                    return
                if events:
                    continue
            activity[activity_index] = -handled  # waiting, with this many events handled
            for fd, mask in epoll_poll(timeout):
                conn = conns.get(fd)
                if conn is None:
                    self._wake(fd)
                    continue
                if not conn.plain:  # writing, closing or holding events back
                    self._service(conn, mask)
                    continue
                # Reading only: data, EOF or an error to read (``_recv``, inlined).
                try:
                    data = conn.sock.recv(conn.read_size)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self._drop(conn)
                    continue
                if not data:
                    self._end_of_input(conn)
                    self._update_mask(conn)
                    continue
                # Exactly one whole message? ``Framer.probe`` is made so that this agrees
                # with ``Framer.feed`` (tests/test_framing.py). partition(), not find():
                # find() parses its arguments the slow way.
                _, found, rest = data.partition(conn.framer.probe)
                if found and not rest:
                    if events:
                        append((conn, data_event, data))
                        continue
                    # Nothing queued before it: deliver it now, as the queue would.
                    handled += 1
                    if mark_events:
                        activity[activity_index] = handled
                    if handled == max_jobs:
                        self._tell_master(MSG_RETIRE_ME)
                    yield conn, data_event, data
                    continue
                # A method, not a comprehension here: a closure over ``conn`` would make it
                # a cell variable, and every use of it in this loop slower.
                self._received(conn, data)

    def _attend(self) -> float | None:
        """The loop's rare duties before it waits; return the wait's timeout (None: stopped)."""
        if self.lingering or self.accept_resume:
            self._expire()
        if self.retiring and not self.stopping:
            self._hand_off_all()
            self.begin_stop(quick=False)
        if self.stopping and self._drained():
            self._shut_down()
            return None
        self.attention = bool(self.stopping or self.lingering or self.accept_resume)
        return self._poll_timeout()

    def answer(self, conn: Connection, response: TcpResponse, body: bytes) -> None:
        """Carry out an answer other than ``RESPOND`` (which ``TcpWorker`` writes itself)."""
        if response is TcpResponse.READ:
            return
        if response is TcpResponse.RESPOND_CLOSE and conn.write(body):
            self.dirty.append(conn)
        self._finish(conn)

    def abandon(self, conn: Connection) -> None:
        """Close a connection after an application error, writing nothing more for it."""
        self._finish(conn)

    # -- the loop -------------------------------------------------------------------

    def _wake(self, fd: int) -> None:
        """A descriptor other than a connection is ready: a listener, the channel or signals."""
        if fd in self.listeners:
            self._accept(self.listeners[fd])
        elif fd == self.channel.fileno():
            self._read_channel()
        elif fd == self.signals.fileno():
            self._read_signals()

    def _service(self, conn: Connection, mask: int) -> None:
        if conn.out_size and mask & (EPOLLOUT | EPOLL_TROUBLE):
            self._send(conn)
            if conn.sock is None:
                return
        if conn.mask & EPOLLIN and mask & (EPOLLIN | EPOLL_TROUBLE):
            self._recv(conn)
        elif mask & EPOLL_TROUBLE and not conn.out_size:
            self._drop(conn)

    def _recv(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(conn.read_size)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if conn.closing:  # lingering: discard until the client's FIN
            if not data:
                self._close_socket(conn)
            return
        if not data:
            self._end_of_input(conn)
            self._update_mask(conn)
            return
        self._received(conn, data)

    def _end_of_input(self, conn: Connection) -> None:
        """The client half-closed: deliver the unfinished rest, then finish after its answers."""
        conn.eof = True
        rest = conn.framer.take_partial()
        if rest:
            self.events.append((conn, DATA, rest))
        self.events.append((conn, _EOF, b""))

    def _received(self, conn: Connection, data: bytes) -> None:
        """Frame bytes read from a connection (or adopted with it) and queue its messages."""
        try:
            messages = conn.framer.feed(data)
        except MessageTooLarge as exc:
            self._too_large(conn, exc)
            return
        self.events.extend([(conn, DATA, m) for m in messages])

    def _too_large(self, conn: Connection, exc: MessageTooLarge) -> None:
        log.warning("closing connection %s (server %s, remote %s): %s", conn.uuid, conn.server, conn.remote or "-", exc)
        self._finish(conn)

    def _send(self, conn: Connection) -> None:
        """Hand a connection's queued output to the kernel (``pump()`` inlines this)."""
        data = conn.take_output()
        try:
            sent = conn.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        self._sent(conn, data, sent)

    def _sent(self, conn: Connection, data: bytes, sent: int) -> None:
        """Act on a send: keep what the kernel did not take, release held events, close."""
        if sent < len(data):
            conn.unsent(data[sent:])
        if conn.held:
            released = conn.release()
            if released:
                self.events.extend(released)
        if conn.closing and not conn.out_size:
            self._close_gracefully(conn)
        else:
            self._update_mask(conn)

    def _accept(self, listener: Listener) -> None:
        lsock = listener.sock
        family, type_, proto = lsock.family, lsock.type, lsock.proto
        try:
            self._accept_batch(listener, lsock, family, type_, proto)
        finally:
            if self.listeners and self.slot.above_fair_share(len(self.conns), FAIR_SHARE):
                self._pause_accepting(ACCEPT_YIELD)  # the other workers take the next ones
            elif listener.sock.fileno() in self.listeners and not self.accept_resume:
                # Re-arm: this worker's wait-queue entry moves behind the other workers',
                # so EPOLLEXCLUSIVE wakes another idle worker for the next connection.
                fd = listener.sock.fileno()
                self.epoll.unregister(fd)
                self.epoll.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)

    def _accept_batch(self, listener: Listener, lsock: socket.socket, family: int, type_: int, proto: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                # The C-level accept and socket type: socket.socket's Python layer costs
                # a noticeable share of a short connection's life.
                fd, addr = lsock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept on %s: %s; pausing accepts", listener.name, exc)
                    self._pause_accepting()
                    return
                continue  # ECONNABORTED and friends: that client is gone already
            sock = _socket.socket(family, type_, proto, fd)
            sock.setblocking(False)
            if listener.is_tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(
                sock,
                new_uuid(),
                listener.name,
                format_peer(family, addr),
                make_framer(listener.delimiter, listener.max_message_size, listener.read_size),
                listener.read_size,
                self.high_water,
            )
            self.conns[conn.fd] = conn
            self.epoll.register(conn.fd, EPOLLIN)
            conn.mask = EPOLLIN
            conn.plain = True
            self.slot.set_connections(len(self.conns))
            self.events.append((conn, CONNECTED, b""))

    # -- finishing connections --------------------------------------------------------

    def _finish(self, conn: Connection) -> None:
        """End a connection gracefully: CLOSE is queued, output is flushed, then FIN."""
        if not conn.finish():
            return
        self.events.append((conn, CLOSE, b""))
        conn.closing = True
        conn.plain = False
        if not conn.out_size:  # else it is on the flush list or waits for EPOLLOUT already
            self._close_gracefully(conn)

    def _drop(self, conn: Connection) -> None:
        """End a connection at once (reset, write error, quick stop), discarding output."""
        if conn.finish():
            self.events.append((conn, CLOSE, b""))
        conn.out.clear()
        conn.out_size = 0
        self._close_socket(conn)

    def _close_gracefully(self, conn: Connection) -> None:
        if conn.eof or self.stopping:
            self._close_socket(conn)
            return
        # Send our FIN, then read until the client's so unread input can't turn it into RST.
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
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
        conn.closing = False
        conn.out.clear()  # a closed connection has nothing to flush
        conn.out_size = 0
        self.lingering.discard(conn)
        # No EPOLL_CTL_DEL: closing the last descriptor of the socket removes it from the
        # epoll set, one system call fewer per connection.
        self.conns.pop(conn.fd, None)
        conn.mask = 0
        conn.plain = False
        self.slot.set_connections(len(self.conns))
        sock.close()

    def _forget(self, conn: Connection) -> None:
        """Stop watching a connection's socket (it is being closed or handed off)."""
        self.conns.pop(conn.fd, None)
        if conn.mask:
            self.epoll.unregister(conn.fd)
            conn.mask = 0
            conn.plain = False
        self.slot.set_connections(len(self.conns))

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
        conn.mask = mask
        conn.settle()

    def _expire(self) -> None:
        now = time.monotonic()
        if self.lingering:
            for conn in [c for c in self.lingering if c.linger_until <= now]:
                self._close_socket(conn)
        if self.accept_resume and now >= self.accept_resume and not self.stopping:
            self.accept_resume = 0.0
            self._watch_listeners()

    def _poll_timeout(self) -> float:
        deadlines = [c.linger_until for c in self.lingering]
        if self.accept_resume:
            deadlines.append(self.accept_resume)
        if self.stopping:
            deadlines.append(self.stop_deadline)
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    # -- listeners, master and signals --------------------------------------------------

    def _watch_listeners(self) -> None:
        for fd in self.listeners:
            # EPOLLEXCLUSIVE: a new connection wakes one waiting worker, not all of them.
            self.epoll.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)

    def _pause_accepting(self, seconds: float = ACCEPT_BACKOFF) -> None:
        if not self.accept_resume:
            for fd in self.listeners:
                self.epoll.unregister(fd)
        self.accept_resume = time.monotonic() + seconds
        self.attention = True

    def _tell_master(self, message: bytes) -> None:
        try:
            self.channel.send(message)
        except OSError:
            self.begin_stop(quick=False)

    def _read_channel(self) -> None:
        """Act on what the master sent (``WorkerLoop`` knows the commands)."""
        raise NotImplementedError

    def _hand_off_all(self) -> None:
        """Hand every open connection over (``WorkerLoop`` knows how)."""
        raise NotImplementedError

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
                self._drop(conn)
            elif conn.open:
                self._finish(conn)
        for conn in list(self.lingering):
            self._close_socket(conn)

    def _close_listeners(self) -> None:
        """Stop accepting: this worker's copies of the listening sockets are closed."""
        if not self.accept_resume:
            for fd in self.listeners:
                self.epoll.unregister(fd)
        self.accept_resume = 0.0
        for lst in self.listeners.values():
            lst.sock.close()
        self.listeners = {}

    def _drained(self) -> bool:
        return not self.conns or time.monotonic() >= self.stop_deadline

    def _shut_down(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn)
        self.stopped = True

