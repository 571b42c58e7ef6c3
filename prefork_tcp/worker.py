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
from collections import deque
from typing import Any

from . import handoff, logs
from .channel import Kind, Message, close_all
from .connection import Connection
from .connset import CONNECTED, EPOLL_TROUBLE, EPOLLIN, EPOLLOUT
from .eventloop import DATA, EventLoop
from .framing import DEFAULT_DELIMITER, DEFAULT_MAX_SIZE, READ_SIZE, make_framer
from .masterlink import MasterLink
from .scoreboard import SlotWriter
from .signals import SignalPipe
from .sockets import Listener
from .timeouts import NONE as NO_TIMEOUTS

log = logging.getLogger("prefork_tcp.worker")

#: How long ``close_connection()`` waits for the other workers' answers.
CLOSE_TIMEOUT = 10.0
#: Parcels sent to the master and not yet acknowledged, at most (each holds descriptors).
HANDOFF_WINDOW = 64
#: How long to wait before sending again a parcel the master could not take.
HANDOFF_RETRY = 0.05


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
        #: The application failed: the loop hands everything over and delivers nothing.
        self.salvaging = False

    @property
    def orphaned(self) -> bool:
        """The master is gone (its end of the channel closed)."""
        return self.master.gone

    def tell_master(self, kind: Kind, **fields: Any) -> None:
        self.master.tell(kind, **fields)

    def _orphan(self) -> None:
        self.begin_stop(quick=False)

    # -- the master's messages --------------------------------------------------------------

    def _wake(self, fd: int, mask: int) -> None:
        if fd == self.master.fileno():
            if mask & EPOLLOUT:
                self.master.flush()
            if mask & (EPOLLIN | EPOLL_TROUBLE):
                self._read_channel()
        else:
            super()._wake(fd, mask)

    def _read_channel(self) -> None:
        for message in self.master.messages():
            self._on_message(message)

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
        """Hand every open connection to the master for another worker; no CLOSE is delivered.

        A connection whose parcel is sent leaves ``conns`` (nothing here touches it: not a
        stop, a timeout or a close by uuid) and is let go once the master acknowledges the
        parcel; a refused one comes back. One that cannot be handed over before the
        deadline, or before a stop, stays here and is finished with its CLOSE delivered.
        """
        waiting = deque(c for c in self.conns.values() if c.open)
        if not waiting:
            return
        in_transit: dict[str, Connection] = {}
        deadline = time.monotonic() + self.drain_timeout
        retry_at = 0.0
        while (waiting or in_transit) and not self.orphaned:
            now = time.monotonic()
            if now >= deadline or (self.stopping and not in_transit):
                break
            blocked = False
            unpackable = 0
            while waiting and len(in_transit) < HANDOFF_WINDOW and now >= retry_at and not self.stopping:
                conn = waiting[0]
                if not conn.open:  # closed meanwhile (by uuid, a timeout): its CLOSE is queued
                    waiting.popleft()
                    continue
                try:
                    fields, fds = handoff.pack(conn.parcel(), conn.fd)
                except OSError as exc:  # no descriptor or memory for its payload: the others first
                    self.warnings.warn("handoff", "cannot hand over connection %s yet: %s", conn.uuid, exc.strerror)
                    waiting.rotate(-1)
                    unpackable += 1
                    if unpackable >= len(waiting):  # none can go now: descriptors free up as parcels leave
                        retry_at = now + HANDOFF_RETRY
                        break
                    continue
                try:
                    sent = self.master.channel.send_with_fds(Kind.PARCEL, fields, fds)
                finally:
                    close_all(fds[1:])
                if not sent:
                    blocked = True  # the channel is full: wait until the master reads
                    break
                waiting.popleft()
                self._forget(conn)
                in_transit[conn.uuid] = conn
            timeout = deadline - now
            if waiting and not blocked and len(in_transit) < HANDOFF_WINDOW and not self.stopping:
                timeout = min(timeout, max(0.0, retry_at - now))
            for message in self.master.wait(timeout, writable=blocked):
                if message.kind is not Kind.PARCEL_ACK:
                    self._on_message(message)
                    continue
                answered = in_transit.pop(message["uuid"], None)
                if answered is None:
                    continue
                if message["ok"]:
                    self._handed_over(answered)
                else:  # it comes back here, to be sent again (or finished, if stopping)
                    self.conns[answered.fd] = answered
                    self._update_mask(answered)
                    self.slot.set_connections(len(self.conns))
                    waiting.append(answered)
                    retry_at = time.monotonic() + HANDOFF_RETRY
        for conn in in_transit.values():
            self._handed_over(conn)  # sent, answer lost: the master has it, or is gone
        for conn in waiting:
            if conn.open:
                log.warning("could not hand over connection %s (server %s); closing it", conn.uuid, conn.server)
                self._finish(conn)

    def _handed_over(self, conn: Connection) -> None:
        """The connection lives on in another worker: nothing more here, not even CLOSE."""
        conn.handed_over()
        if conn.sock is not None:
            conn.sock.close()
            conn.sock = None

    def salvage(self, current: Connection | None) -> None:
        """After the application raised: close the connection whose event raised, write the
        answers already given, hand every other connection over, and stop.

        Events read but not delivered go back into their connections' parcels (a
        connection whose CONNECTED was never delivered gets it from its new owner). The
        event loop is not resumed: it may have been in the middle of a batch of reads.
        """
        self.tell_master(Kind.APP_FAILED)  # before any parcel: no connection is sent back here
        self.salvaging = True
        if current is not None and current.open:
            self._finish(current)
        self._flush_dirty()  # may release a slow reader's held events into the queue
        for conn, event, body in self.events:
            if event is CONNECTED:
                conn.connected = False
            elif event is DATA and conn.open:
                conn.unread.append(body)
        self.events.clear()
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
        self.conns[conn.fd] = conn
        self.slot.set_connections(len(self.conns))
        log.debug("adopted connection %s (server %s)", conn.uuid, conn.server)
        if parcel.unsent_output and conn.write(parcel.unsent_output):
            self.dirty.append(conn)
        if not parcel.connected:
            self.events.append((conn, CONNECTED, b""))
        if self.stopping:  # arrived during a stop: its output is flushed, then it closes
            self._finish(conn)
            return
        if parcel.pending_input:
            self._received(conn, parcel.pending_input)
        if parcel.eof and conn.open:
            self._end_of_input(conn)
        self._update_mask(conn)
