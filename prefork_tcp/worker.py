"""A worker as its master drives it: commands, retiring, handing over, adopting, salvage.

``Worker`` is the ``eventloop.EventLoop`` a worker process runs, plus its master
(``masterlink.MasterLink``): what the master can ask between two events (stop, retire,
close a connection by uuid, adopt a connection another worker handed over), handing
every connection over when this worker retires, and salvaging the connections when the
application raised.  Nothing here runs inside application code: the channel is read
only while the loop waits for sockets.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from . import handoff, logs
from .channel import Kind, Message, close_all
from .connection import Connection
from .connset import CONNECTED, EPOLL_TROUBLE, EPOLLIN, EPOLLOUT
from .eventloop import EventLoop
from .framing import DEFAULT_DELIMITER, DEFAULT_MAX_SIZE, READ_SIZE, make_framer
from .handover import hand_off
from .masterlink import MasterLink
from .scoreboard import Closed, SlotWriter, State
from .signals import SignalPipe
from .sockets import Listener
from .timeouts import NONE as NO_TIMEOUTS

log = logging.getLogger("prefork_tcp.worker")

#: How long ``close_connection()`` waits for the other workers' answers.
CLOSE_TIMEOUT = 10.0
#: How long moving a slow event's neighbours may take; those left stay.
MOVE_TIMEOUT = 1.0


class Worker(EventLoop):
    """The event loop of a worker process, with the master's commands."""

    _close_ids = 0

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
        super().__init__(listeners, signals, drain_timeout, high_water, slot, max_jobs, mark_events, max_connections)
        self.master = MasterLink(channel, self.epoll, self.warnings, on_lost=self._orphan)
        self.master_fd = self.master.fileno()  # compared at every wake of a descriptor that is not a connection
        #: The application failed: the loop hands everything over and delivers nothing.
        self.salvaging = False
        #: The master's messages that came while connections moved away from a slow event,
        #: acted on by the loop when it runs again.
        self.deferred: list[Message] = []
        #: Connections are moving away from a slow event (the watchdog has the loop).
        self.moving = False

    @property
    def orphaned(self) -> bool:
        """The master is gone (its end of the channel closed)."""
        return self.master.gone

    def tell_master(self, kind: Kind, **fields: Any) -> None:
        self.master.tell(kind, **fields)

    def _orphan(self) -> None:
        if self.moving:  # the loop stops once it runs again (_attend)
            self.attention = True
            return
        self.begin_stop(quick=False)

    # -- the master's messages --------------------------------------------------------------

    def _wake(self, fd: int, mask: int) -> None:
        if fd == self.master_fd:
            if mask & EPOLLOUT:
                self.master.flush()
            if mask & (EPOLLIN | EPOLL_TROUBLE):
                self._read_channel()
        else:
            super()._wake(fd, mask)

    def _read_channel(self) -> None:
        for message in self.master.messages():
            self._on_message(message)

    def _attend(self) -> float | None:
        if self.orphaned and not self.stopping:
            self.begin_stop(quick=False)
        if self.ready and not (self.stopping or self.retiring):
            self.slot.set_state(State.SERVING)  # after a slow event (move_others)
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            for message in deferred:
                self._on_message(message)
        return super()._attend()

    def _on_ready(self) -> None:
        super()._on_ready()
        self.tell_master(Kind.READY)

    def _on_budget(self, handled: int) -> int:
        """At three quarters of the budget the master starts a successor; at the end this
        worker hands its connections over without waiting for the master."""
        self.tell_master(Kind.BUDGET_LOW if handled < self.max_jobs else Kind.BUDGET_SPENT)
        return super()._on_budget(handled)

    def _on_message(self, message: Message) -> None:
        """Act on one message from the master."""
        kind = message.kind
        if kind is Kind.PARCEL:
            if (self.retiring and not self.stopping) or self.salvaging:  # the master sends it elsewhere
                close_all(message.fds)
                self.tell_master(Kind.PARCEL_ACK, uuid=message["uuid"], ok=False)
            else:
                self._adopt(message)
        elif kind is Kind.QUIT:
            self.begin_stop(quick=True)
        elif kind is Kind.STOP:
            self.begin_stop(quick=False)
        elif kind is Kind.RETIRE:
            self.begin_retire()
        elif kind is Kind.REOPEN_LOGS:
            logs.reopen()
        elif kind is Kind.CLOSE:
            found = self.close_by_uuid(message["uuid"])
            self.tell_master(Kind.CLOSED, id=message["id"], found=found)
        # PARCEL_ACK and CLOSE_RESULT are awaited where they are asked for.

    # -- closing a connection by uuid (RoadRunner's tcp.Close) -----------------------------

    def close_connection(self, uuid: str) -> bool:
        """Close connection ``uuid`` wherever it lives; return whether it existed."""
        if self.close_by_uuid(uuid):
            return True
        Worker._close_ids += 1
        request_id = Worker._close_ids
        self.tell_master(Kind.CLOSE_REQUEST, id=request_id, uuid=uuid)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        found: bool | None = None
        while found is None and (left := deadline - time.monotonic()) > 0 and not self.stopping:
            for message in self.master.wait(left):  # every message of the batch is acted on
                if message.kind is Kind.CLOSE_RESULT and message["id"] == request_id:
                    found = bool(message["found"])
                else:
                    self._on_message(message)
        if found is None and not self.stopping:
            log.warning("close_connection(%s): no answer from the master in %gs", uuid, CLOSE_TIMEOUT)
        return bool(found)

    # -- retiring: handing connections over ------------------------------------------------

    def _hand_off_all(self) -> None:
        """Hand every open connection over (retiring); no CLOSE is delivered for them. One
        that cannot be handed over in time, or before a stop, is finished with its CLOSE."""
        _, left = hand_off(self, [c for c in self.conns.values() if c.open], self.drain_timeout)
        for conn in left:
            log.warning("could not hand over connection %s (server %s); closing it", conn.uuid, conn.server)
            self._finish(conn, Closed.SHUTDOWN if self.stopping else Closed.ERROR)

    def move_others(self, keep: Connection | None) -> int:
        """An event of ``keep`` runs long: hand this worker's other connections over, so
        that they are served elsewhere meanwhile; return how many left.

        Runs in the watchdog thread while the application is inside that event and the
        watchdog has the loop (``gate.py``): nothing else touches the loop meanwhile.
        The master's other messages, and the news that it is gone, wait for the loop
        (a stop now would close the connection whose event still runs); accepting pauses
        until the loop runs again.
        """
        if self.stopping or self.retiring or self.salvaging or self.orphaned or not self.slot.others_serving():
            return 0
        self.moving = True
        try:
            self.slot.set_state(State.SLOW)  # other slow workers do not move connections here
            self.tell_master(Kind.SLOW)
            self.acceptor.pause(0)  # resumes at the loop's next round
            self.attention = True
            others = [c for c in self.conns.values() if c is not keep and c.open]
            handed, _ = hand_off(self, others, MOVE_TIMEOUT)
        finally:
            self.moving = False
        return handed

    def salvage(self, current: Connection | None) -> None:
        """After the application raised: close the connection whose event raised, write the
        answers already given, hand every other connection over, and stop.

        Events read but not delivered go back into their connections' parcels (a
        connection whose CONNECTED was never delivered gets it from its new owner). The
        event loop is not resumed: it may have been in the middle of a batch of reads.
        """
        self.tell_master(Kind.APP_FAILED)  # before any parcel: no connection is sent back here
        self.salvaging = True
        deferred, self.deferred = self.deferred, []
        for message in deferred:  # a close by uuid waits for its answer; parcels are refused
            self._on_message(message)
        if current is not None and current.open:
            self._finish(current, Closed.ERROR)
        self._flush_dirty()  # may release a slow reader's held events into the queue
        self.begin_retire()
        if not self.stopping:
            self._hand_off_all()
            self.begin_stop(quick=False)
        while not self._drained():  # the closing connections' output and FIN; no event is delivered
            self.events.clear()
            self._flush_dirty()
            for fd, mask in self.epoll.poll(self._poll_timeout()):
                ready = self.conns.get(fd)
                if ready is not None:
                    self._service(ready, mask)
                else:
                    self._wake(fd, mask)
            self._expire()
        self._shut_down()

    def _adopt(self, message: Message) -> None:
        """Carry on serving a connection another worker handed over: same uuid, no CONNECTED."""
        uuid = message["uuid"]
        try:
            parcel = handoff.unpack(message.fields, message.fds)
            sock = socket.socket(fileno=message.fds[0])
        except (OSError, ValueError) as exc:
            close_all(message.fds[:1])
            self.warnings.warn("adopt", "cannot adopt connection %s: %s; the master sends it elsewhere", uuid, exc)
            self.tell_master(Kind.PARCEL_ACK, uuid=uuid, ok=False)
            return
        self.tell_master(Kind.PARCEL_ACK, uuid=uuid, ok=True)
        sock.setblocking(False)
        server = self.servers.get(parcel.server)
        conn = Connection(
            sock,
            parcel.uuid,
            parcel.server,
            parcel.remote,
            make_framer(server.delimiter, server.max_message_size, server.read_size)
            if server
            else make_framer(DEFAULT_DELIMITER, DEFAULT_MAX_SIZE),
            server.read_size if server else READ_SIZE,
            self.high_water,
            server.timeouts if server else NO_TIMEOUTS,
            self.clock,
        )
        conn.shared = True
        broken = False
        if parcel.session:
            try:
                conn.session = handoff.unpickle_session(parcel.session)
            except Exception as exc:  # the application's classes changed (a reload?)
                log.warning("connection %s (server %s): its session cannot be restored (%s); closing it", uuid, conn.server, exc)
                broken = True
        self.conns[conn.fd] = conn
        self._added(conn)
        log.debug("adopted connection %s (server %s)", conn.uuid, conn.server)
        if parcel.unsent_output and conn.write(parcel.unsent_output):
            self.dirty.append(conn)
        if not parcel.connected:
            self.events.append((conn, CONNECTED, b""))
        if self.stopping or broken:  # its output is flushed, then it closes
            self._finish(conn, Closed.SHUTDOWN if self.stopping else Closed.ERROR)
            return
        if parcel.pending_input:
            self._received(conn, parcel.pending_input)
        if parcel.eof and conn.open:
            self._end_of_input(conn)
        self._update_mask(conn)
