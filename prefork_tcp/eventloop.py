"""A worker's event loop: read, frame, deliver events, write answers.

``EventLoop`` adds the messages to ``connset.ConnectionSet``.  The application drives it:
``TcpWorker.wait_request()`` takes the next event from ``pump()``, which hands out
queued events and, only when none are left, flushes every answer written since the last
poll (one ``send`` per connection) and waits in ``epoll``.

``pump()`` is the worker's hot loop, a program within a program: it keeps what it
touches per event in local variables and inlines the success paths of reading, framing
and flushing.  Each inlined block names its slow twin (``_recv``, ``_send``,
``_flush_dirty``), which handles everything else; the error handling is shared, and
tests/test_loop.py drives the same bytes through both and requires the same events and
output.  Connection state changes only through ``Connection`` methods.

On its own, an ``EventLoop`` serves its listeners until a signal stops it;
``worker.Worker`` adds the master: its commands, the handoff of connections, salvage.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator

from .connection import Connection, Event
from .connset import _BY_APP, _BY_CLIENT, _BY_ERROR, _BY_LIMIT, EPOLL_TROUBLE, EPOLLIN, EPOLLOUT, ConnectionSet, lost
from .events import TcpEvent, TcpResponse
from .framing import Framer, MessageTooLarge
from .gate import Gate
from .logs import printable
from .scoreboard import SlotWriter, State
from .signals import SignalPipe
from .sockets import Listener
from .sysio import recv, send
from .unfinished import THRESHOLD as UNFINISHED_THRESHOLD
from .unfinished import UnfinishedBytes
from .unfinished import limit_for as unfinished_limit

try:
    import cython
except ImportError:  # plain Python without Cython installed
    from . import nocython as cython

if cython.compiled:
    from cython.cimports.prefork_tcp.cframing import one_message
    from cython.cimports.prefork_tcp.cloop import call_noargs, gather, is_noargs, words
    from cython.cimports.prefork_tcp.csysio import c_poll

log = logging.getLogger("prefork_tcp.worker")

DATA = TcpEvent.DATA
_EOF = None  # queued after a half-closed connection's last DATA
_READ, _RESPOND_CLOSE = TcpResponse.READ, TcpResponse.RESPOND_CLOSE  # read once (connset's _BY_*)


class EventLoop(ConnectionSet):
    """The event loop of one worker; see the module docstring."""

    def __init__(
        self,
        listeners: list[Listener],
        signals: SignalPipe,
        drain_timeout: float,
        high_water: int,
        slot: SlotWriter | None = None,
        max_jobs: int = 0,
        mark_events: bool = True,
        max_connections: int = 0,
    ) -> None:
        super().__init__(listeners, signals, drain_timeout, high_water, slot, max_connections)
        #: Connections answered since the last flush.
        self.dirty: list[Connection] = []
        #: This worker's budget of events (0: none); ``_on_budget`` runs at 3/4 and at the end.
        self.max_jobs = max_jobs
        self.budget_mark = -1 if max_jobs <= 0 else (max_jobs * 3 // 4 or max_jobs)
        #: Whether each event's number goes into the scoreboard as it starts (``exec_ttl``
        #: needs it); the count of events handled is published at every wait regardless.
        self.mark_events = mark_events
        #: Bytes held in unfinished messages, bounded for the whole worker.
        self.unfinished: UnfinishedBytes[Connection] = UnfinishedBytes(unfinished_limit([lst.max_message_size for lst in listeners]))
        self.ready = False
        #: Whether the application's thread or the watchdog has the loop (``gate.py``).
        self.gate = Gate()
        #: Stopped accepting and reading; connections are handed over once the events
        #: already read are delivered (``_hand_off_all``), then the loop stops.
        self.retiring = False

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
        self._on_ready()
        events = self.events
        popleft, append = events.popleft, events.append
        # Annotated for the compiled core: C integers and flags there, and the list's and
        # dict's own operations (locals' annotations are never evaluated by Python).
        dirty: list[Connection] = self.dirty
        conns: dict[int, Connection] = self.conns
        high_water: cython.Py_ssize_t = self.high_water
        activity, ints, close_event = self.slot.signed, self.slot.ints, TcpEvent.CLOSE
        activity_index: cython.Py_ssize_t = self.slot.activity_index
        lifecycle_index: cython.Py_ssize_t = self.slot.lifecycle_index
        budget_mark: cython.Py_ssize_t = self.budget_mark
        mark_events: cython.bint = self.mark_events
        handled: cython.Py_ssize_t = 0
        conn: Connection | None
        epoll_poll = self.epoll.poll
        data_event = DATA  # a local: cheaper to load than a global
        compiled: cython.bint = cython.compiled  # C helpers where compiled (cloop.pxd)
        whole: cython.bint  # a read that is one whole message
        # Compiled, deque.popleft is called as the C function it is.
        direct_popleft: cython.bint = compiled and is_noargs(popleft)
        # Compiled, the wait is C too (csysio.pxd), on a real epoll set: not on a stand-in.
        epoll_fd: cython.int = self.epoll.fileno() if compiled and type(self.epoll) is select.epoll else -1
        # Compiled, the scoreboard words this loop writes are C pointers into the shared
        # memory (cloop.pxd), which ``activity`` and ``ints`` keep mapped: a store is one C
        # store instead of a memoryview's item assignment.
        activity_word: cython.p_longlong
        lifecycle_words: cython.p_ulonglong
        if compiled:
            activity_word = cython.cast(cython.p_longlong, words(activity, activity_index, 1))
            lifecycle_words = cython.cast(cython.p_ulonglong, words(ints, lifecycle_index, 2))  # CONNECTED, CLOSE
        while True:
            while events:
                item = call_noargs(popleft) if direct_popleft else popleft()
                conn, event, _ = item
                if event is data_event:
                    if not conn.open:
                        continue
                    if conn.held or conn.out_size >= high_water:
                        self._hold(conn, item)  # a slow reader: wait until its output drains
                        continue
                elif event is _EOF:
                    if conn.open and not conn.hold(item):
                        self._finish(conn, _BY_CLIENT)
                    continue
                else:  # CONNECTED or CLOSE: counted for the metrics (DATA is the rest)
                    if compiled:
                        lifecycle_words[event is close_event] += 1
                    else:
                        ints[lifecycle_index + (event is close_event)] += 1
                handled += 1
                if mark_events:  # the scoreboard: event number `handled` in progress
                    if compiled:
                        activity_word[0] = handled
                    else:
                        activity[activity_index] = handled
                if handled == budget_mark:
                    budget_mark = self._on_budget(handled)
                yield item
            if dirty:
                for conn in dirty:
                    out = conn.out
                    if not out or conn.sock is None:  # sent already, or closed (an answer may come after)
                        continue
                    # Flush (``_send``, inlined): one send per connection.
                    data: bytes = gather(out) if compiled else b"".join(out)  # a single chunk comes back as it is
                    out.clear()
                    conn.out_size = 0
                    sent: cython.Py_ssize_t
                    try:
                        sent = send(conn.fd, data)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        self._drop(conn, lost(exc))
                        continue
                    if sent != len(data) or not conn.plain:
                        self._sent(conn, data, sent)
                dirty.clear()
                if events:  # flushing released events held back for a slow reader
                    continue
            timeout: float | None = -1
            if self.attention:
                timeout = self._attend()
                if timeout is None:  # the last events count too
                    if compiled:
                        activity_word[0] = -handled
                    else:
                        activity[activity_index] = -handled
                    return
                if events:
                    continue
            if compiled:  # waiting, with this many events handled
                activity_word[0] = -handled
            else:
                activity[activity_index] = -handled
            for fd, mask in c_poll(epoll_fd, timeout) if epoll_fd >= 0 else epoll_poll(timeout):
                conn = conns.get(fd)
                if conn is None:
                    self._wake(fd, mask)
                    continue
                if not conn.plain:  # writing, closing or holding events back
                    self._service(conn, mask)
                    continue
                # Reading only: data, EOF or an error to read (``_recv``, inlined).
                try:
                    data = recv(conn.fd, conn.read_size)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self._drop(conn, lost(exc))
                    continue
                if not data:
                    self._end_of_input(conn)
                    continue
                conn.active = True  # for idle_timeout (``timeouts.expired``)
                # Exactly one whole message? ``Framer.probe`` is made so that this agrees
                # with ``Framer.feed`` (tests/test_framing.py). Compiled, a C search for
                # the first probe; plain, partition(), as find() parses its arguments the
                # slow way.
                if compiled:
                    framer = conn.framer  # a Framer's probe is a C field: read as one
                    whole = one_message(data, cython.cast(Framer, framer).probe if type(framer) is Framer else framer.probe)
                else:
                    _, found, rest = data.partition(conn.framer.probe)
                    whole = found and not rest
                if whole:
                    if events:
                        append((conn, data_event, data))
                        continue
                    # Nothing queued before it: deliver it now, as the queue would.
                    handled += 1
                    if mark_events:
                        if compiled:
                            activity_word[0] = handled
                        else:
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

    # -- the worker's life: ready, budget, retiring --------------------------------------

    def _on_ready(self) -> None:
        """The application waits for its first event."""
        self.ready = True
        self.slot.set_state(State.SERVING)

    def _on_budget(self, handled: int) -> int:
        """``handled`` events reached a mark of the max_jobs budget; return the next mark.

        At the end this worker stops accepting and reading and, once the events it has
        read are delivered, hands every connection over (SPEC: max_jobs is a budget).
        """
        if handled < self.max_jobs:
            return self.max_jobs
        self.begin_retire()
        return -1

    def begin_retire(self) -> None:
        """Stop accepting; once queued events are delivered, hand every open connection over."""
        if self.retiring or self.stopping:
            return
        self.retiring = True
        self.attention = True
        self.slot.set_state(State.RETIRING)
        self._close_listeners()

    def _hand_off_all(self) -> None:
        """Hand every open connection over. With no master to take them there is no one to
        hand them to: the stop that follows finishes them, each with its CLOSE."""

    def close_connection(self, uuid: str) -> bool:
        """Close connection ``uuid``; return whether it existed (here: in this worker)."""
        return self.close_by_uuid(uuid)

    def answer(self, conn: Connection, response: TcpResponse, body: bytes) -> None:
        """Carry out an answer other than ``RESPOND`` (which ``TcpWorker`` writes itself)."""
        if response is _READ:
            return
        if response is _RESPOND_CLOSE and conn.write(body):
            self.dirty.append(conn)
        self._finish(conn, _BY_APP)

    def abandon(self, conn: Connection) -> None:
        """Close a connection after an application error, writing nothing more for it."""
        self._finish(conn, _BY_ERROR)

    def _forget(self, conn: Connection) -> None:
        super()._forget(conn)
        if conn in self.unfinished.sizes:  # handed over: its unfinished bytes went along
            self.unfinished.note(conn, 0, _unfinished_of)

    def _attend(self) -> float | None:
        """The rare duties (``ConnectionSet._attend``), a retirement's handoff first (once
        the connections still sending their PROXY header have it, or have run out of time)."""
        if self.retiring and not self.stopping and not self.headers:
            self._hand_off_all()
            self.begin_stop(quick=False)
        timeout = super()._attend()
        if self.retiring and not self.stopping:  # headers still pending: look again next round
            self.attention = True
        return timeout

    # -- reading and writing --------------------------------------------------------

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
            self._drop(conn, _BY_CLIENT)

    def _recv(self, conn: Connection) -> None:
        """Read a connection that is not plain (``pump()`` inlines the plain case; the
        twins are kept in step by tests/test_loop.py)."""
        try:
            data = recv(conn.fd, conn.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, lost(exc))
            return
        if conn.closing:  # lingering: discard until the client's FIN
            if not data:
                self._close_socket(conn)
            return
        if not data:
            self._end_of_input(conn)
            return
        conn.active = True
        self._received(conn, data)

    def _end_of_input(self, conn: Connection) -> None:
        """The client half-closed: deliver the unfinished rest, then finish after its answers.

        A plain connection (reading only) had nothing left to send: it stays registered for
        reading until the queued ``_EOF`` is taken, before the loop waits again, and is
        closed then (a closed socket leaves the epoll set by itself, one system call fewer
        per connection); answers written meanwhile go through the flush, whose ``_sent``
        sets the mask. Any other connection (sending, holding events back) stops being
        read at once: its EOF, readable for good, must not end it before its output is
        out, even should its ``_EOF`` be dropped from the queue (a salvage, a handoff)."""
        conn.eof = True
        rest = conn.framer.take_partial()
        if rest:
            self.events.append((conn, DATA, rest))
        self.events.append((conn, _EOF, b""))
        if not conn.plain:
            self._update_mask(conn)

    def _received(self, conn: Connection, data: bytes) -> None:
        """Frame bytes read from a connection (or adopted with it) and queue its messages."""
        try:
            events = conn.framer.feed(data, conn, DATA)  # as (conn, DATA, message)
        except MessageTooLarge as exc:
            self._too_large(conn, exc)
            return
        self.events.extend(events)
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
                self._finish(victim, _BY_LIMIT)

    def _too_large(self, conn: Connection, exc: MessageTooLarge) -> None:
        log.warning("closing connection %s (server %s, remote %s): %s", conn.uuid, conn.server, printable(conn.remote) or "-", exc)
        self._finish(conn, _BY_LIMIT)

    def _send(self, conn: Connection) -> None:
        """Hand a connection's queued output to the kernel (``pump()`` inlines this)."""
        data = conn.take_output()
        try:
            sent = send(conn.fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._drop(conn, lost(exc))
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


def _unfinished_of(conn: Connection) -> int:
    return conn.framer.pending if conn.open and conn.sock is not None else 0
