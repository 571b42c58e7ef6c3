"""A worker's side of its channel to the master: stop, retire, hand over, adopt, close.

``WorkerLoop`` is the event loop of ``worker.py`` plus what the master can ask of a
worker between two events.  Everything here runs in the worker process, never inside
application code: the channel is read only while the loop waits for sockets.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import time

from . import handoff
from .connection import Connection
from .framing import make_framer
from .scoreboard import State
from .worker import CMD_QUIT, CMD_RETIRE, CMD_STOP, DATA, EventLoop

log = logging.getLogger("prefork_tcp.worker")

#: Master to worker: close the connection with this uuid if it is yours (JSON: id, uuid).
CMD_CLOSE = b"C"
#: Worker to master: whether it had that connection (JSON: id, found).
MSG_CLOSED = b"c"
#: Worker to master: please close this uuid wherever it lives (JSON: id, uuid).
MSG_CLOSE_REQUEST = b"K"
#: Master to worker: the answer to its close request (JSON: id, found).
CMD_CLOSE_RESULT = b"k"
#: How long ``close_connection()`` waits for the other workers' answers.
CLOSE_TIMEOUT = 10.0


class WorkerLoop(EventLoop):
    """The event loop of a worker process, with the master's commands."""

    _close_ids = 0

    def _read_channel(self) -> None:
        while (received := handoff.receive(self.channel)) is not None:
            if not self._on_message(*received):
                return

    def _on_message(self, message: bytes, fds: list[int]) -> bool:
        """Act on one message from the master; False once the master is gone."""
        if message.startswith(handoff.MSG_PARCEL):
            self._adopt(*handoff.unpack(message, fds))
            return True
        for fd in fds:
            os.close(fd)
        if not message:
            self.begin_stop(quick=False)
            return False
        if message == CMD_QUIT:
            self.begin_stop(quick=True)
        elif message == CMD_STOP:
            self.begin_stop(quick=False)
        elif message == CMD_RETIRE:
            self.begin_retire()
        elif message.startswith(CMD_CLOSE):
            ask = json.loads(message[1:])
            found = self.close_by_uuid(ask["uuid"])
            self._tell_master(MSG_CLOSED + json.dumps({"id": ask["id"], "found": found}).encode())
        return True

    # -- closing a connection by uuid (RoadRunner's tcp.Close) -----------------------------

    def close_by_uuid(self, uuid: str) -> bool:
        """Close this worker's connection ``uuid`` (its CLOSE follows); False if it is not here."""
        for conn in self.conns.values():
            if conn.uuid == uuid and conn.open:
                self._finish(conn)
                return True
        return False

    def close_connection(self, uuid: str) -> bool:
        """Close connection ``uuid`` wherever it lives; return whether it existed."""
        if self.close_by_uuid(uuid):
            return True
        WorkerLoop._close_ids += 1
        request_id = WorkerLoop._close_ids
        self._tell_master(MSG_CLOSE_REQUEST + json.dumps({"id": request_id, "uuid": uuid}).encode())
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while (left := deadline - time.monotonic()) > 0 and not self.stopping:
            select.select([self.channel], [], [], left)
            while (received := handoff.receive(self.channel)) is not None:
                message, fds = received
                if message.startswith(CMD_CLOSE_RESULT):
                    answer = json.loads(message[1:])
                    if answer["id"] == request_id:
                        return bool(answer["found"])
                elif not self._on_message(message, fds):
                    return False
        log.warning("close_connection(%s): no answer from the master in %gs", uuid, CLOSE_TIMEOUT)
        return False

    # -- retiring: handing connections over ------------------------------------------------

    def begin_retire(self) -> None:
        """Stop accepting; once queued events are delivered, hand every open connection over."""
        if self.retiring or self.stopping:
            return
        self.retiring = True
        self.attention = True
        self.slot.set_state(State.RETIRING)
        self._close_listeners()

    def _hand_off_all(self) -> None:
        """Send every open connection to the master for another worker; no CLOSE is delivered."""
        self.channel.setblocking(True)
        self.channel.settimeout(self.drain_timeout)
        try:
            for conn in [c for c in self.conns.values() if c.open]:
                self._hand_off(conn)
        except OSError as exc:
            log.error("handing connections over failed: %s; closing the rest", exc)
        finally:
            self.channel.setblocking(False)

    def _hand_off(self, conn: Connection) -> None:
        message, fds = handoff.pack(conn.parcel(DATA), conn.fd)
        try:
            handoff.send(self.channel, message, fds)
        finally:
            for fd in fds[1:]:
                os.close(fd)
        conn.open = False  # it lives on in another worker: nothing more here, not even CLOSE
        self._forget(conn)
        conn.sock.close()  # type: ignore[union-attr]
        conn.sock = None

    def _adopt(self, parcel: handoff.Parcel, fd: int) -> None:
        """Carry on serving a connection another worker handed over: same uuid, no CONNECTED."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        server = self.servers.get(parcel.server)
        delimiter, max_size, read_size = (
            (server.delimiter, server.max_message_size, server.read_size) if server else (b"\r\n", 1 << 20, 65536)
        )
        conn = Connection(sock, parcel.uuid, parcel.server, parcel.remote,
                          make_framer(delimiter, max_size, read_size), read_size, self.high_water)
        self.conns[conn.fd] = conn
        self.slot.set_connections(len(self.conns))
        log.debug("adopted connection %s (server %s)", conn.uuid, conn.server)
        if parcel.unsent_output and conn.write(parcel.unsent_output):
            self.dirty.append(conn)
        if self.stopping:  # arrived during a stop: its output is flushed, then it closes
            self._finish(conn)
            return
        if parcel.pending_input:
            self._received(conn, parcel.pending_input)
        if parcel.eof and conn.open:
            self._end_of_input(conn)
        self._update_mask(conn)

