"""Per-connection timeouts (``idle_timeout``, ``read_timeout``, ``write_timeout``).

Nothing here runs per event.  The worker loop's hot path only raises flags on a
connection (``active`` after a read or a send that made progress, ``wrote`` after a
send that made progress); a sweep every ``interval`` seconds (a timerfd wakes the loop,
see ``ticker.py``) reads the clock once and turns flags into times with ``expired()``.
So a timeout fires between its value and its value plus one interval after the fact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: Bounds of the sweep interval: a quarter of the shortest timeout, within these.
MIN_INTERVAL = 0.05
MAX_INTERVAL = 1.0


@dataclass(frozen=True)
class Timeouts:
    """One server's timeouts in seconds; 0 disables each."""

    idle: float = 0.0
    read: float = 0.0
    write: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.idle or self.read or self.write)


NONE = Timeouts()


def sweep_interval(timeouts: Iterable[Timeouts]) -> float:
    """Return how often to sweep for these servers' timeouts (0: never)."""
    values = [t for server in timeouts for t in (server.idle, server.read, server.write) if t > 0]
    if not values:
        return 0.0
    return min(MAX_INTERVAL, max(MIN_INTERVAL, min(values) / 4))


class FramerState(Protocol):
    @property
    def pending(self) -> int: ...
    @property
    def started(self) -> int: ...


class Watched(Protocol):
    """What ``expired`` reads and marks on a connection (``connection.Connection``)."""

    @property
    def timeouts(self) -> Timeouts: ...
    @property
    def open(self) -> bool: ...
    @property
    def reading(self) -> bool: ...
    @property
    def framer(self) -> FramerState: ...
    @property
    def out_size(self) -> int: ...

    active: bool
    idle_since: float
    partial_seen: int
    partial_since: float
    wrote: bool
    write_since: float


def expired(conn: Watched, now: float) -> str | None:
    """Return the name of the timeout ``conn`` ran out of at ``now``, or None.

    Updates the connection's marks: call it once per sweep.  A connection that is
    finished (draining its last answer) is checked for ``write_timeout`` only.
    """
    limits = conn.timeouts
    if conn.open:
        if conn.active:
            conn.active = False
            conn.idle_since = now
        elif limits.idle and now - conn.idle_since >= limits.idle:
            return "idle_timeout"
        framer = conn.framer
        if limits.read and framer.pending and conn.reading:
            # ``started`` counts messages begun: the same number as at the last sweep
            # means the same message is still unfinished.
            if conn.partial_seen != framer.started:
                conn.partial_seen = framer.started
                conn.partial_since = now
            elif now - conn.partial_since >= limits.read:
                return "read_timeout"
        else:
            conn.partial_seen = -1  # nothing started, or not being read: the clock restarts
    if limits.write:
        if not conn.out_size:
            conn.write_since = 0.0
        elif conn.wrote or not conn.write_since:
            conn.wrote = False
            conn.write_since = now
        elif now - conn.write_since >= limits.write:
            return "write_timeout"
    return None
