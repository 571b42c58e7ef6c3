"""A worker's event loop: accept, read, frame, queue events, write answers, close.

The application drives the loop: ``TcpWorker.wait_request()`` takes the next event from
``pump()``, which hands out queued events and, only when none are left, flushes every
answer written since the last poll (one ``send`` per connection) and waits in ``epoll``.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from . import timeouts as timeout_rules
from .accepting import Acceptor
from .channel import Channel, Kind
from .connection import Connection, Event
from .events import TcpEvent, TcpResponse
from .framing import MessageTooLarge
from .logs import Throttle, printable
from .scoreboard import Scoreboard, SlotWriter, State
from .signals import SignalPipe
from .sockets import Listener, unsent_bytes
from .ticker import Ticker
from .unfinished import THRESHOLD as UNFINISHED_THRESHOLD
from .unfinished import UnfinishedBytes
from .unfinished import limit_for as unfinished_limit

log = logging.getLogger("prefork_tcp.worker")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_TROUBLE = select.EPOLLERR | select.EPOLLHUP
CONNECTED = TcpEvent.CONNECTED
DATA = TcpEvent.DATA
CLOSE = TcpEvent.CLOSE
_EOF = None  # queued after a half-closed connection's last DATA

#: How long a gracefully closed connection waits for the client's FIN after ours.
LINGER = 2.0


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
        max_connections: int = 0,
    ) -> None:
        self.epoll = select.epoll()
        self.events: deque[Event] = deque()
        #: Connections answered since the last flush.
        self.dirty: list[Connection] = []
        self.conns: dict[int, Connection] = {}
        #: Framing rules by server name, for connections adopted from other workers.
        self.servers = {lst.name: lst for lst in listeners}
        self.slot = slot or SlotWriter(Scoreboard(1), 0)
        #: This worker's budget of events (0: none); ``_on_budget`` runs at 3/4 and at the end.
        self.max_jobs = max_jobs
        self.budget_mark = -1 if max_jobs <= 0 else (max_jobs * 3 // 4 or max_jobs)
        #: Whether each event's number goes into the scoreboard as it starts (``exec_ttl``
        #: needs it); the count of events handled is published at every wait regardless.
        self.mark_events = mark_events
        self.channel = Channel(channel, peer="master")
        self.signals = signals
        self.drain_timeout = drain_timeout
        self.high_water = high_water
        self.lingering: set[Connection] = set()
        self.ready = False
        self.stopping = False
        self.quick = False
        self.stopped = False
        self.retiring = False
        #: The application failed: the loop hands everything over and delivers nothing.
        self.salvaging = False
        #: The master is gone (its end of the channel closed).
        self.orphaned = False
        self.stop_deadline = 0.0
        #: Set whenever the loop has rare duties (``_attend``): retiring, stopping,
        #: lingering closes, paused accepts.
        self.attention = False
        self.warnings = Throttle(log)
        #: Bytes held in unfinished messages, bounded for the whole worker.
        self.unfinished: UnfinishedBytes[Connection] = UnfinishedBytes(unfinished_limit([lst.max_message_size for lst in listeners]))
        #: Listeners found readable in the last poll, accepted from in ``_attend``.
        self.accept_ready: list[int] = []
        self.acceptor = Acceptor(listeners, self.epoll, self.slot, max_connections, high_water, self.warnings)
        self.epoll.register(self.channel.fileno(), EPOLLIN)
        self.epoll.register(signals.fileno(), EPOLLIN)
        # Timeouts: a sweep every ``interval``, woken by a timerfd (no clock read per event).
        self.clock = time.monotonic()
        interval = timeout_rules.sweep_interval(lst.timeouts for lst in listeners)
        self.ticker = Ticker(interval) if interval else None
        if self.ticker is not None:
            self.epoll.register(self.ticker.fileno(), EPOLLIN)
        self.acceptor.sync()

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
        self.tell_master(Kind.READY)
        events, dirty, conns, high_water = self.events, self.dirty, self.conns, self.high_water
        popleft, append = events.popleft, events.append
        activity, activity_index = self.slot.signed, self.slot.activity_index
        budget_mark, mark_events = self.budget_mark, self.mark_events
        handled = 0
        conn: Connection | None
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
                        self._hold(conn, item)  # a slow reader: wait until its output drains
                        continue
                elif event is _EOF:
                    if conn.open and not conn.hold(item):
                        self._finish(conn)
                    continue
                handled += 1
                if mark_events:
                    activity[activity_index] = handled  # the scoreboard: event number `handled` in progress
                if handled == budget_mark:
                    budget_mark = self._on_budget(handled)
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
                        sent = conn.sock.send(data)
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
                    self._wake(fd, mask)
                    continue
                if not conn.plain:  # writing, closing or holding events back
                    self._service(conn, mask)
                    continue
                # Reading only: data, EOF or an error to read (``_recv``, inlined).
                try:
                    data = conn.sock.recv(conn.read_size)  # type: ignore[union-attr]  # an open connection has its socket
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self._drop(conn)
                    continue
                if not data:
                    self._end_of_input(conn)
                    self._update_mask(conn)
                    continue
                conn.active = True  # for idle_timeout (``timeouts.expired``)
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
                    if handled == budget_mark:
                        budget_mark = self._on_budget(handled)
                        if self.retiring:  # the budget is spent: nothing more is read
                            yield conn, data_event, data
                            break
                    yield conn, data_event, data
                    continue
                # A method, not a comprehension here: a closure over ``conn`` would make it
                # a cell variable, and every use of it in this loop slower.
                self._received(conn, data)

    def _on_budget(self, handled: int) -> int:
        """``handled`` events reached a mark of the max_jobs budget; return the next mark.

        At three quarters the master starts a successor; at the end this worker stops
        accepting and reading and, once the events it has read are delivered, hands every
        connection over without waiting for the master (SPEC: max_jobs is a budget).
        """
        if handled < self.max_jobs:
            self.tell_master(Kind.BUDGET_LOW)
            return self.max_jobs
        self.tell_master(Kind.BUDGET_SPENT)
        self.begin_retire()
        return -1

    def _attend(self) -> float | None:
        """The loop's rare duties before it waits; return the wait's timeout (None: stopped)."""
        if self.accept_ready:
            ready, self.accept_ready = self.accept_ready, []
            for fd in ready:
                if fd in self.acceptor.listeners:
                    self._accept(fd)
        if self.lingering or self.acceptor.resume_at:
            self._expire()
        if self.retiring and not self.stopping:
            self._hand_off_all()
            self.begin_stop(quick=False)
        if self.stopping and self._drained():
            self._shut_down()  # CLOSE is queued for what is left: delivered before the loop ends
            if not self.events:
                return None
        self.attention = bool(self.stopping or self.lingering or self.acceptor.resume_at)
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

    def _wake(self, fd: int, mask: int) -> None:
        """A descriptor other than a connection is ready: a listener, the channel, signals, the ticker."""
        if fd in self.acceptor.listeners:
            # Accepted in ``_attend``, after the rest of this batch: a stop that came with it
            # (the channel, a signal) is seen before a new connection is taken.
            self.accept_ready.append(fd)
            self.attention = True
        elif fd == self.channel.fileno():
            if mask & EPOLLOUT:
                self._flush_channel()
            if mask & (EPOLLIN | EPOLL_TROUBLE):
                self._read_channel()
        elif fd == self.signals.fileno():
            self._read_signals()
        elif self.ticker is not None and fd == self.ticker.fileno():
            self.ticker.drain()
            self._sweep()

    def _sweep(self) -> None:
        """Close the connections whose idle, read or write timeout ran out."""
        self.clock = now = time.monotonic()
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
            self._drop(conn)  # its output cannot be delivered
        else:
            self._finish(conn)

    def _hold(self, conn: Connection, item: Event) -> None:
        """Hold back a slow reader's event and stop reading it until its output drains."""
        conn.hold(item)
        if conn.mask & EPOLLIN:
            self._update_mask(conn)

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
        """Read a connection that is not plain (``pump()`` inlines the plain case; the
        twins are kept in step by tests/test_loop.py)."""
        try:
            data = conn.sock.recv(conn.read_size)  # type: ignore[union-attr]  # an open connection has its socket
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
        conn.active = True
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
        pending = conn.framer.pending
        if pending >= UNFINISHED_THRESHOLD or conn in self.unfinished.sizes:
            for victim in self.unfinished.note(conn, pending, _unfinished_of):
                log.warning(
                    "closing connection %s (server %s, remote %s): its unfinished message (%d KiB) is the "
                    "largest while this worker holds more than %d MiB of them",
                    victim.uuid,
                    victim.server,
                    printable(victim.remote) or "-",
                    victim.framer.pending >> 10,
                    self.unfinished.limit >> 20,
                )
                self._finish(victim)

    def _too_large(self, conn: Connection, exc: MessageTooLarge) -> None:
        log.warning("closing connection %s (server %s, remote %s): %s", conn.uuid, conn.server, printable(conn.remote) or "-", exc)
        self._finish(conn)

    def _send(self, conn: Connection) -> None:
        """Hand a connection's queued output to the kernel (``pump()`` inlines this)."""
        data = conn.take_output()
        try:
            sent = conn.sock.send(data)  # type: ignore[union-attr]  # an open connection has its socket
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        self._sent(conn, data, sent)

    def _flush_dirty(self) -> None:
        """Send every answer written since the last flush (``pump()`` inlines this)."""
        for conn in self.dirty:
            if conn.out and conn.sock is not None:
                self._send(conn)
        self.dirty.clear()

    def _sent(self, conn: Connection, data: bytes, sent: int) -> None:
        """Act on a send: keep what the kernel did not take, release held events, close."""
        if sent:
            conn.active = conn.wrote = True  # progress, for idle_timeout and write_timeout
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

    def _accept(self, fd: int) -> None:
        new = self.acceptor.accept(fd, len(self.conns), self.clock)
        if self.acceptor.resume_at:
            self.attention = True
        if not new:
            return
        conns, register, append = self.conns, self.epoll.register, self.events.append
        for conn in new:
            conns[conn.fd] = conn
            register(conn.fd, EPOLLIN)
            conn.watched(EPOLLIN)
            append((conn, CONNECTED, b""))
        self.slot.set_connections(len(conns))

    # -- finishing connections --------------------------------------------------------

    def _finish(self, conn: Connection) -> None:
        """End a connection gracefully: CLOSE is queued, output is flushed, then FIN."""
        if not conn.finish():
            return
        self.events.append((conn, CLOSE, b""))
        conn.closing_down()
        if not conn.out_size:  # else it is on the flush list or waits for EPOLLOUT already
            self._close_gracefully(conn)

    def _drop(self, conn: Connection) -> None:
        """End a connection at once (reset, write error, quick stop), discarding output."""
        if conn.finish():
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
        self.conns.pop(conn.fd, None)
        conn.detached()  # a closed connection has nothing to flush
        sock.close()
        self._removed()

    def _forget(self, conn: Connection) -> None:
        """Stop watching a connection's socket (it is being closed or handed off)."""
        self.conns.pop(conn.fd, None)
        if conn.mask:
            self.epoll.unregister(conn.fd)
            conn.watched(0)
        self._removed()

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

    # -- listeners, master and signals --------------------------------------------------

    def _removed(self) -> None:
        """A connection left this worker: publish the count, accept again if it was full."""
        count = len(self.conns)
        self.slot.set_connections(count)
        self.acceptor.removed(count)

    def tell_master(self, kind: Kind, **fields: Any) -> None:
        """Send the master a message; it waits in the channel's queue if the socket is full."""
        self.channel.send(kind, **fields)
        if self.channel.broken:
            self._orphan()
        elif self.channel.pending and not self.orphaned:
            self.epoll.modify(self.channel.fileno(), EPOLLIN | EPOLLOUT)

    def _flush_channel(self) -> None:
        if self.channel.flush() and not self.orphaned:
            self.epoll.modify(self.channel.fileno(), EPOLLIN)

    def _orphan(self) -> None:
        """The master is gone: stop watching the channel (its EOF would wake every poll), stop."""
        if not self.orphaned:
            self.orphaned = True
            try:
                self.epoll.unregister(self.channel.fileno())
            except OSError:
                pass
        self.begin_stop(quick=False)

    def _read_channel(self) -> None:
        """Act on what the master sent (``WorkerLoop`` knows the commands)."""
        raise NotImplementedError

    def _hand_off_all(self) -> None:
        """Hand every open connection over (``WorkerLoop`` knows how)."""
        raise NotImplementedError

    def begin_retire(self) -> None:
        """Stop accepting, then hand every connection over (``WorkerLoop`` knows how)."""
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
        self.acceptor.close()

    def _drained(self) -> bool:
        return not self.conns or time.monotonic() >= self.stop_deadline

    def _shut_down(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn)
        self.stopped = True


def _unfinished_of(conn: Connection) -> int:
    return conn.framer.pending if conn.open and conn.sock is not None else 0
