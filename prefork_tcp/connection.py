"""One client connection's state: identity, input framing, unsent output, lifecycle.

Sans-IO: the worker loop does every read, write and close; this object only records what
was read and answered and says what the loop should do next (``wants_read``,
``out_size``, ``closing``).
"""

from __future__ import annotations

import _socket
from select import EPOLLIN
from typing import Any, Union

from .events import TcpEvent
from .framing import READ_SIZE, Framer, StreamFramer
from .handoff import Parcel, pickle_session
from .timeouts import NONE, Timeouts

FramerT = Union[Framer, StreamFramer]
#: What the event loop queues and hands out: a connection, its event (None: the end of
#: a half-closed connection's input, never handed out) and the body.
Event = tuple["Connection", Union[TcpEvent, None], bytes]
_DATA = TcpEvent.DATA
_CONNECTED = TcpEvent.CONNECTED

#: Default bytes of unsent output above which the connection stops being read.
HIGH_WATER = 1024 * 1024


class Connection:
    """State of one accepted connection, owned by exactly one worker."""

    __slots__ = (
        "active",
        "closing",
        "connected",
        "eof",
        "fd",
        "framer",
        "held",
        "high_water",
        "idle_since",
        "kernel_queued",
        "linger_until",
        "mask",
        "open",
        "out",
        "out_size",
        "partial_seen",
        "partial_since",
        "plain",
        "read_size",
        "remote",
        "server",
        "session",
        "shared",
        "sock",
        "timeouts",
        "unread",
        "uuid",
        "write_since",
        "wrote",
    )

    def __init__(
        self,
        sock: _socket.socket | None,
        uuid: str,
        server: str,
        remote: str,
        framer: FramerT,
        read_size: int = READ_SIZE,
        high_water: int = HIGH_WATER,
        timeouts: Timeouts = NONE,
        now: float = 0.0,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno() if sock is not None else -1
        self.uuid = uuid
        self.server = server
        self.remote = remote
        self.framer = framer
        #: Bytes asked for by one read.
        self.read_size = read_size
        self.high_water = high_water
        #: Chunks of output not yet handed to the kernel, oldest first.
        self.out: list[bytes] = []
        self.out_size = 0
        #: True until the connection is finished; events other than CLOSE are delivered
        #: only while it is open.
        self.open = True
        #: The client half-closed (EOF read): nothing more will be read.
        self.eof = False
        #: Finished, but the socket stays until the output drains (graceful close).
        self.closing = False
        #: Events held back while the output is above the high-water mark, oldest first.
        self.held: list[Event] | None = None
        #: The epoll event mask the socket is registered with (0: not registered).
        self.mask = 0
        #: Registered for EPOLLIN only, nothing held, not closing: the loop's fast paths
        #: check this one flag, which ``settle()`` keeps true to those three.
        self.plain = False
        #: Monotonic deadline while waiting for the client's FIN after our own.
        self.linger_until = 0.0
        #: Whether CONNECTED was delivered (a handoff before that lets the new owner do it).
        self.connected = True
        #: Adopted: another process may hold the socket's file too (the master, until it
        #: has our acknowledgement), so closing ours does not take it out of the epoll set.
        self.shared = False
        #: Messages taken back from the event queue undelivered (the application failed,
        #: or the connection moves while another event runs): they travel with the
        #: parcel, after the held ones.
        self.unread: list[bytes] = []
        #: ``TcpWorker.session``: the application's own state for this connection, made
        #: on first use; it travels with the parcel.
        self.session: dict[str, Any] | None = None
        # Timeouts (``timeouts.expired``): the loop raises ``active`` on every read and
        # ``wrote`` on every send that made progress; the sweep turns them into times.
        self.timeouts = timeouts
        self.active = True  # the next sweep starts its idle clock
        self.idle_since = now
        self.partial_seen = -1
        self.partial_since = 0.0
        self.wrote = False
        self.write_since = 0.0
        #: What the kernel held unsent for it at the last sweep (SIOCOUTQ).
        self.kernel_queued = 0

    def write(self, data: bytes) -> bool:
        """Queue output; return True when it is the first queued (the loop must flush it).

        The loop keeps every connection with queued output either on its list of
        connections to flush or registered for ``EPOLLOUT``, so only the first write
        after the output drained needs telling.
        """
        if not data:
            return False
        out = self.out
        out.append(data)
        self.out_size += len(data)
        return len(out) == 1

    def take_output(self) -> bytes:
        """Return all queued output as one buffer, leaving none queued."""
        data = b"".join(self.out)  # a single chunk comes back as it is
        self.out.clear()
        self.out_size = 0
        return data

    def unsent(self, rest: bytes) -> None:
        """Put back the part of ``take_output()`` the kernel did not take."""
        if rest:
            self.out.insert(0, rest)
            self.out_size += len(rest)

    def hold(self, event: Event) -> bool:
        """Keep ``event`` back if output is above the high-water mark (or others are held).

        Return True when held: a slow reader's queued messages then wait instead of
        producing more output, so its memory stays bounded by about one answer.
        """
        if self.held:
            self.held.append(event)
            return True
        if self.out_size < self.high_water:
            return False
        self.held = [event]
        self.plain = False
        return True

    def release(self) -> list[Event] | None:
        """Return the held events once output is below the high-water mark, else None."""
        if not self.held or self.out_size >= self.high_water:
            return None
        held, self.held = self.held, None
        self.settle()
        return held

    def parcel(self) -> Parcel:
        """Return what another worker needs to carry on serving this connection.

        Nothing is taken: the connection stays as it is until the parcel has safely
        arrived.  Held events become unread input again (their bodies keep their
        delimiters, so the new owner frames them into the same messages); output not
        yet sent goes along, and so does the session (pickled: ``handoff.SessionError``
        when it cannot be).
        """
        held = self.held or []
        pending = b"".join([body for _, event, body in held if event is _DATA] + self.unread) + self.framer.peek_partial()
        session = pickle_session(self.session) if self.session else b""
        return Parcel(self.uuid, self.server, self.remote, self.eof, pending, b"".join(self.out), self.connected, session)

    def take_back(self, events: list[Event]) -> None:
        """This connection's events read but not delivered go back into it, to travel with
        its parcel: an undelivered CONNECTED is delivered by the new owner, messages are
        read again there (the end of input travels as ``eof``)."""
        for _, event, body in events:
            if event is _CONNECTED:
                self.connected = False
            elif event is _DATA:
                self.unread.append(body)

    def put_back(self) -> None:
        """Undo ``take_back`` once the parcel is packed (a snapshot): the events stay queued here."""
        self.connected = True
        self.unread.clear()

    def watched(self, mask: int) -> None:
        """The loop registered the socket for ``mask`` (0: not registered)."""
        self.mask = mask
        self.settle()

    def closing_down(self) -> None:
        """Finished: the socket stays until its output is flushed and the client's FIN read."""
        self.closing = True
        self.plain = False
        if self.framer.pending:
            self.framer.take_partial()  # never to be delivered: free it now

    def discard_output(self) -> None:
        """Drop the output not sent yet (the connection is being dropped or handed over)."""
        self.out.clear()
        self.out_size = 0

    def detached(self) -> None:
        """The socket was closed or handed over: nothing is watched, nothing is left to do."""
        self.closing = False
        self.discard_output()
        self.watched(0)

    def handed_over(self) -> None:
        """The connection lives on in another worker: nothing more here, not even CLOSE."""
        self.open = False
        self.held = None
        self.detached()

    def settle(self) -> None:
        """Bring ``plain`` up to date after ``mask``, ``held`` or ``closing`` changed."""
        self.plain = self.mask == EPOLLIN and not self.held and not self.closing

    def finish(self) -> bool:
        """Mark the connection finished; return True the first time (CLOSE is then due)."""
        if not self.open:
            return False
        self.open = False
        return True

    @property
    def wants_read(self) -> bool:
        """Whether the loop should read: open, no EOF yet, output below the high-water mark
        and no events held back (a client that never reads is not read either)."""
        return self.open and not self.eof and self.out_size < self.high_water and not self.held

    @property
    def reading(self) -> bool:
        """Whether the loop is reading this connection now (for the read timeout)."""
        return bool(self.mask & EPOLLIN) and not self.closing

    def __repr__(self) -> str:
        state = "open" if self.open else ("closing" if self.closing else "finished")
        return f"<Connection {self.uuid} {self.server} {self.remote} {state}>"
