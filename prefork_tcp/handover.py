"""Handing a worker's connections to the master for other workers, acknowledged.

One routine serves the three reasons a worker lets connections go: retiring (all of
them, then the worker exits), salvage after the application raised (all but the one
whose event raised), and moving away from a slow event (all but the slow one, and the
worker goes on).  The parcels themselves are in ``handoff.py``.

- A connection's events read but not delivered go with it (``Connection.take_back``)
  and come back into the queue, in order, if it stays.
- A connection whose parcel is sent leaves the worker's table: nothing touches it (not
  a stop, a timeout or a close by uuid) until the master acknowledges the parcel; then
  it is let go.  A refused one comes back and is sent again until the deadline.
- The master's other messages that come meanwhile are acted on at once, or, while the
  application is inside an event (a move), kept for the loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from . import handoff
from .channel import Kind, Message, close_all
from .scoreboard import Closed

if TYPE_CHECKING:
    from .connection import Connection, Event
    from .logs import Throttle
    from .masterlink import MasterLink
    from .scoreboard import SlotWriter

log = logging.getLogger("prefork_tcp.worker")

#: Parcels sent to the master and not yet acknowledged, at most (each holds descriptors).
HANDOFF_WINDOW = 64
#: How long to wait before sending again a parcel the master could not take.
HANDOFF_RETRY = 0.05


class Holder(Protocol):
    """What a handover needs of the worker (``worker.Worker``)."""

    conns: dict[int, Connection]
    events: deque[Event]
    master: MasterLink
    slot: SlotWriter
    warnings: Throttle
    stopping: bool
    deferred: list[Message]
    moving: bool

    @property
    def orphaned(self) -> bool: ...
    def _forget(self, conn: Connection) -> None: ...
    def _update_mask(self, conn: Connection) -> None: ...
    def _added(self, conn: Connection) -> None: ...
    def _finish(self, conn: Connection, why: Closed) -> None: ...
    def _on_message(self, message: Message) -> None: ...


def hand_off(worker: Holder, conns: list[Connection], timeout: float) -> tuple[int, list[Connection]]:
    """Hand ``conns`` over; return how many went, and those still here and open.

    ``worker.moving``: the application is inside an event (``Worker.move_others``): the master's
    other messages wait in ``worker.deferred``, and a connection whose session cannot be
    pickled simply stays (without ``moving`` it is closed here, its CLOSE delivered:
    SPEC §1).
    """
    waiting = deque(conns)
    if not waiting:
        return 0, []
    moving = worker.moving
    queued = _take_queued(worker, set(conns))
    in_transit: dict[str, Connection] = {}
    handed = 0
    deadline = time.monotonic() + timeout
    retry_at = 0.0
    try:
        while (waiting or in_transit) and not worker.orphaned:
            now = time.monotonic()
            if now >= deadline or (worker.stopping and not in_transit):
                break
            blocked = False
            unpackable = 0
            while waiting and len(in_transit) < HANDOFF_WINDOW and now >= retry_at and not worker.stopping:
                conn = waiting[0]
                if not conn.open:  # closed meanwhile (by uuid, a timeout): its CLOSE is queued
                    waiting.popleft()
                    continue
                try:
                    fields, fds = _pack(conn, queued.get(conn, []))
                except handoff.SessionError as exc:
                    waiting.popleft()
                    _requeue(worker, conn, queued)
                    if moving:
                        worker.warnings.warn("session", "connection %s stays in its worker: %s", conn.uuid, exc)
                    else:
                        log.warning("closing connection %s (server %s) instead of handing it over: %s", conn.uuid, conn.server, exc)
                        worker._finish(conn, Closed.ERROR)
                    continue
                except OSError as exc:  # no descriptor or memory for its payload: the others first
                    worker.warnings.warn("handoff", "cannot hand over connection %s yet: %s", conn.uuid, exc.strerror)
                    waiting.rotate(-1)
                    unpackable += 1
                    if unpackable >= len(waiting):  # none can go now: descriptors free up as parcels leave
                        retry_at = now + HANDOFF_RETRY
                        break
                    continue
                try:
                    sent = worker.master.channel.send_with_fds(Kind.PARCEL, fields, fds)
                finally:
                    close_all(fds[1:])
                if not sent:
                    blocked = True  # the channel is full: wait until the master reads
                    break
                waiting.popleft()
                worker._forget(conn)
                in_transit[conn.uuid] = conn
            timeout = deadline - now
            if waiting and not blocked and len(in_transit) < HANDOFF_WINDOW and not worker.stopping:
                timeout = min(timeout, max(0.0, retry_at - now))
            for message in worker.master.wait(timeout, writable=blocked):
                if message.kind is not Kind.PARCEL_ACK:
                    if moving:
                        worker.deferred.append(message)
                    else:
                        worker._on_message(message)
                    continue
                answered = in_transit.pop(message["uuid"], None)
                if answered is None:
                    continue
                if message["ok"]:
                    handed_over(answered)
                    handed += 1
                else:  # it comes back here, to be sent again (or to stay)
                    worker.conns[answered.fd] = answered
                    worker._update_mask(answered)
                    worker._added(answered)
                    waiting.append(answered)
                    retry_at = time.monotonic() + HANDOFF_RETRY
    finally:  # also after an exception: nothing half-done is left behind
        for conn in in_transit.values():
            handed_over(conn)  # sent, answer lost: the master has it, or is gone
            handed += 1
        left = [conn for conn in waiting if conn.open]
        for conn in left:
            _requeue(worker, conn, queued)
    return handed, left


def _pack(conn: Connection, queued: list[Event]) -> tuple[dict[str, Any], list[int]]:
    """The connection's parcel with its queued events in it; the connection itself stays as
    it was (a parcel is a snapshot). Raises what ``handoff.pack`` raises."""
    conn.take_back(queued)
    try:
        return handoff.pack(conn.parcel(), conn.fd)
    finally:
        conn.put_back()


def handed_over(conn: Connection) -> None:
    """The connection lives on in another worker: nothing more here, not even CLOSE."""
    conn.handed_over()
    if conn.sock is not None:
        conn.sock.close()
        conn.sock = None


def _take_queued(worker: Holder, conns: set[Connection]) -> dict[Connection, list[Event]]:
    """Take the queued events of ``conns`` out of the queue, by connection, in order."""
    queued: dict[Connection, list[Event]] = {}
    if worker.events:
        kept: list[Event] = []
        for item in worker.events:
            if item[0] in conns:
                queued.setdefault(item[0], []).append(item)
            else:
                kept.append(item)
        worker.events.clear()
        worker.events.extend(kept)
    return queued


def _requeue(worker: Holder, conn: Connection, queued: dict[Connection, list[Event]]) -> None:
    """A connection stays: its queued events go back into the queue, in order."""
    worker.events.extend(queued.pop(conn, []))
