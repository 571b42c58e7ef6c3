"""A worker's listening sockets: whether to accept now, and taking new connections.

Workers share the master's listening sockets and wait on them with ``EPOLLEXCLUSIVE``,
so a new connection wakes one worker.  A worker stops waiting on them (``armed`` is
false) while it is paused (out of descriptors, or letting the others take a turn),
while it is full (``max_connections``, or only a reserve of descriptors left for
connections handed over by other workers), and for good once it stops or retires.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import resource
import select
import socket
import time
from collections.abc import Iterable

from .connection import Connection
from .framing import Framer, StreamFramer, make_framer
from .logs import Throttle
from .scoreboard import SlotWriter
from .sockets import Listener
from .sysio import accept
from .uuids import new_uuid

log = logging.getLogger("prefork_tcp.worker")

#: Connections accepted per wake-up of one listener, so one busy listener can't starve the rest.
ACCEPT_BATCH = 64
#: How long accepting pauses when the process runs out of file descriptors.
ACCEPT_BACKOFF = 0.5
#: A worker holding more than FAIR_SHARE times the serving workers' average number of
#: connections, plus FAIR_SHARE_SLACK, lets the others accept for ACCEPT_YIELD seconds.
#: The slack keeps a few short connections, which come and go faster than the published
#: counts follow, from pausing a worker for nothing (docs/performance.md, "Accept balance").
FAIR_SHARE = 1.1
FAIR_SHARE_SLACK = 8
ACCEPT_YIELD = 0.001
#: Descriptors kept free for connections handed over by other workers: a worker stops
#: accepting while fewer are left.
FD_RESERVE = 32
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """When and how one worker accepts; the loop registers what ``accept`` returns."""

    def __init__(
        self,
        listeners: Iterable[Listener],
        epoll: select.epoll,
        slot: SlotWriter,
        max_connections: int,
        high_water: int,
        warnings: Throttle,
    ) -> None:
        self.listeners = {lst.sock.fileno(): lst for lst in listeners}
        #: Each listener's framing, which every connection it accepts gets a fresh copy of.
        self.framers = {fd: make_framer(lst.delimiter, lst.max_message_size, lst.read_size) for fd, lst in self.listeners.items()}
        self.epoll = epoll
        self.slot = slot
        self.high_water = high_water
        self.warnings = warnings
        #: Whether the listening sockets are in the epoll set.
        self.armed = False
        #: Accepting is paused until then (0: not paused): out of descriptors, or fair share.
        self.resume_at = 0.0
        #: At capacity: accepting resumes when a connection leaves (``removed``).
        self.full = False
        self.max_connections = max_connections
        self.capacity = capacity(max_connections)

    def sync(self) -> None:
        """Put the listeners in the epoll set or take them out, as the state says."""
        wanted = bool(self.listeners) and not self.full and not self.resume_at
        if wanted == self.armed:
            return
        for fd in self.listeners:
            if wanted:  # EPOLLEXCLUSIVE: a new connection wakes one waiting worker, not all of them.
                self.epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            else:
                self.epoll.unregister(fd)
        self.armed = wanted

    def pause(self, seconds: float) -> None:
        """Stop accepting for ``seconds`` (a longer pause already decided is kept)."""
        self.resume_at = max(self.resume_at, time.monotonic() + seconds)
        self.sync()

    def expire(self, now: float) -> None:
        """Resume accepting once a pause is over."""
        if self.resume_at and now >= self.resume_at:
            self.resume_at = 0.0
            self.sync()

    def removed(self, connections: int) -> None:
        """A connection left the worker, which now holds ``connections``."""
        if self.full:
            # Count again: descriptors the application held may be free now.
            self.capacity = capacity(self.max_connections, connections, self.capacity)
            if connections < self.capacity:
                self.full = False
                self.sync()

    def accept(self, fd: int, connections: int, clock: float) -> list[Connection]:
        """Accept what waits on listener ``fd`` (the worker holds ``connections``); return
        the new connections, unregistered."""
        listener = self.listeners[fd]
        accepted = self._accept_batch(listener, self.framers[fd], connections, clock)
        if not self.armed:  # paused, full or stopped: nothing to re-arm
            return accepted
        if self.slot.above_fair_share(connections + len(accepted), FAIR_SHARE, FAIR_SHARE_SLACK):
            self.pause(ACCEPT_YIELD)  # the other workers take the next ones
        elif self.slot.others_serving():
            # Re-arm: this worker's wait-queue entry moves behind the other workers',
            # so EPOLLEXCLUSIVE wakes another idle worker for the next connection. (Alone,
            # it would stay where it is: two system calls per wake-up saved.)
            self.epoll.unregister(fd)
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        return accepted

    def _accept_batch(self, listener: Listener, framing: Framer | StreamFramer, connections: int, clock: float) -> list[Connection]:
        lsock = listener.sock
        lfd, family, type_, proto = lsock.fileno(), lsock.family, lsock.type, lsock.proto
        tcp, keepalive_idle = listener.is_tcp, listener.keepalive
        accepted: list[Connection] = []
        for _ in range(ACCEPT_BATCH):
            if connections + len(accepted) >= self.capacity:
                self.full = True
                self.sync()
                self.warnings.warn(
                    "capacity",
                    "worker holds %d connections, its limit (max_connections, or the "
                    "open-files limit less a reserve); not accepting until one closes",
                    connections + len(accepted),
                )
                break
            try:
                sock, remote = accept(lsock, lfd, family, type_, proto, tcp)  # non-blocking, TCP_NODELAY
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self.warnings.warn(
                        "accept", "cannot accept on %s: %s; pausing accepts for %gs", listener.name, exc.strerror, ACCEPT_BACKOFF
                    )
                    if exc.errno == errno.EMFILE:  # the application opened descriptors: keep the reserve
                        self.capacity = capacity(self.max_connections, connections + len(accepted), self.capacity)
                    self.pause(ACCEPT_BACKOFF)
                    break
                continue  # ECONNABORTED and friends: that client is gone already
            if tcp and keepalive_idle:
                keepalive(sock, keepalive_idle)
            accepted.append(
                Connection(
                    sock,
                    new_uuid(),
                    listener.name,
                    remote,
                    framing.fresh(),
                    listener.read_size,
                    self.high_water,
                    listener.timeouts,
                    clock,
                )
            )
        return accepted

    def close(self) -> None:
        """Stop accepting for good: this worker's copies of the listening sockets are closed."""
        for lst in self.listeners.values():
            if self.armed:
                self.epoll.unregister(lst.sock.fileno())
            lst.sock.close()
        self.listeners = {}
        self.armed = False
        self.resume_at = 0.0


def capacity(max_connections: int, connections: int = 0, unknown: int = 0) -> int:
    """Connections a worker may hold: ``max_connections`` (0: no limit of its own) and the
    open-files limit less the descriptors in use now for anything but its ``connections``
    and the reserve for handoffs; ``unknown`` if they cannot be counted now (no descriptor
    left to list them with)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        others = len(os.listdir("/proc/self/fd")) - connections
    except OSError:
        if unknown:
            return unknown
        others = 64
    by_fds = max(1, soft - others - FD_RESERVE) if soft != resource.RLIM_INFINITY else 1 << 30
    return min(by_fds, max_connections) if max_connections else by_fds


def keepalive(sock: _socket.socket, idle: float) -> None:
    """Turn on TCP keepalive: probes after ``idle`` seconds of silence (whole seconds)."""
    seconds = max(1, round(idle))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, min(seconds, 75)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
