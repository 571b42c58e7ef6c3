"""Per-worker state in shared memory: workers write it without syscalls, the master reads it.

The master maps an anonymous shared region before forking; every worker gets one slot
of eight 8-byte fields (64 bytes: one cache line, so workers never share a line).
Aligned 8-byte stores and loads are atomic on the platforms this runs on, so no lock is
needed: each field has exactly one writer (the worker owning the slot, or the master
while the slot is free).

Workers write no times: a clock read per event is a noticeable share of handing an event
out.  The master times what it observes instead (``supervisor.Watch``).

After the slots come the same number of counter areas (``COUNTERS`` fields each, the
metrics of SPEC §8): how the worker's connections ended, the CONNECTED and CLOSE events
it handed out, the PROXY headers it refused, and per server (by the index of the
server in the worker's own configuration) its open and accepted connections.  They are
written once per connection, never per message; the master adds a slot's counters to
its own totals when the worker is gone, so nothing grows as workers recycle.
"""

from __future__ import annotations

import enum
import math
import mmap
from dataclasses import dataclass

try:
    import cython
except ImportError:  # plain Python without Cython installed
    from . import nocython as cython

FIELDS = 8
SLOT_BYTES = FIELDS * 8

# Field offsets within a slot; 5 to 7 are spare.
PID = 0  # Q
STATE = 1  # Q: a State
ACTIVITY = 2  # q: -N while the worker waits after N events; +N while event N runs (marked with exec_ttl only)
CONNECTIONS = 3  # Q: open connections
STARTED = 4  # d: monotonic time the worker was started


#: Servers one master serves at most (each has counters in every slot).
MAX_SERVERS = 64
# Counter offsets within a slot's counter area: a Closed reason, then these, then the servers'.
CONNECTED_EVENTS = 6
CLOSE_EVENTS = 7  # CONNECTED_EVENTS + 1: the loop adds ``event is CLOSE`` to the first
HEADERS_REFUSED = 8
SERVER_COUNTERS = 16  # server i: its open connections at 16 + 2i, its accepted ones at 16 + 2i + 1
COUNTERS = SERVER_COUNTERS + 2 * MAX_SERVERS


class Closed(enum.IntEnum):
    """Why a connection ended (``prefork_tcp_closed_total{reason}``)."""

    CLIENT = 0  # the client closed or reset it
    APP = 1  # the application closed it (CLOSE, RESPOND_CLOSE, close_connection, ``prefork-tcp close``)
    TIMEOUT = 2  # idle_timeout, read_timeout or write_timeout ran out
    LIMIT = 3  # max_message_size, or the worker's bound on unfinished messages
    ERROR = 4  # a socket error, the application raised, it could not be handed over
    SHUTDOWN = 5  # the server stopped


class State(enum.IntEnum):
    FREE = 0
    BOOTING = 1
    SERVING = 2  # ready, taking connections (busy or not: see ACTIVITY)
    RETIRING = 3  # handing connections over, or stopping
    SLOW = 4  # serving, inside an event that runs long: its other connections moved away


_STATES = frozenset(int(state) for state in State)
_SERVING = State.SERVING  # read per slot per accept: Python 3.10 and 3.11 read enum members slowly
_ZEROS = memoryview(bytes(COUNTERS * 8)).cast("Q")
_MAX_COUNT = 1 << 48


@dataclass(frozen=True)
class Row:
    """A snapshot of one slot, as the master sees it."""

    slot: int
    pid: int
    state: State
    busy: int  # number of the event in progress; 0 while waiting
    events: int  # events handed out so far, the one in progress included
    connections: int
    started: float


@dataclass(frozen=True)
class Counts:
    """A slot's counters, as the master sees them (clamped: a worker may have scribbled)."""

    closed: tuple[int, ...]  # by Closed reason
    connected_events: int
    close_events: int
    headers_refused: int
    open: tuple[int, ...]  # by server index
    accepted: tuple[int, ...]


class Scoreboard:
    """``slots`` slots of shared memory; create it in the master before forking."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # One more 8-byte field after the slots: how many slots from the start are (or were)
        # used; then the slots' counter areas.
        self._map = mmap.mmap(-1, slots * SLOT_BYTES + 8 + slots * COUNTERS * 8, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.ints = memoryview(self._map).cast("Q")
        self.signed = memoryview(self._map).cast("q")
        self.floats = memoryview(self._map).cast("d")

    def claim(self, pid: int, started: float, taken: set[int] | frozenset[int] | None = None) -> int:
        """Return a slot no live worker has, now marked booting for ``pid``; raises
        RuntimeError when all are taken.

        ``taken``: the slots of live workers. The master passes its own list rather than
        trusting the slots' states, which any worker could have overwritten; without it,
        slots that are not FREE are taken.
        """
        ints = self.ints
        if taken is None:
            taken = {slot for slot in range(self.slots) if ints[slot * FIELDS + STATE] != State.FREE}
        for slot in range(self.slots):
            if slot not in taken:
                base = slot * FIELDS
                self.reset(slot)
                ints[self.used_index] = min(max(ints[self.used_index], slot + 1), self.slots)
                ints[base + PID] = pid
                self.floats[base + STARTED] = started
                ints[base + STATE] = State.BOOTING
                return slot
        raise RuntimeError(f"all {self.slots} scoreboard slots are in use")

    @property
    def used_index(self) -> int:
        """Index into ``ints`` of the number of slots in use from the start (a bound for scans)."""
        return self.slots * FIELDS

    def counters_base(self, slot: int) -> int:
        """Index into ``ints`` of a slot's counter area."""
        return self.used_index + 1 + slot * COUNTERS

    def set_pid(self, slot: int, pid: int) -> None:
        self.ints[slot * FIELDS + PID] = pid

    def reset(self, slot: int) -> None:
        """Zero a slot and its counters (the master does this when its worker is gone)."""
        base = slot * FIELDS
        self.ints[base : base + FIELDS] = _ZEROS[:FIELDS]
        base = self.counters_base(slot)
        self.ints[base : base + COUNTERS] = _ZEROS

    def row(self, slot: int) -> Row:
        """Return a slot as the master sees it. Workers write their own fields, so nothing
        read here is trusted: a state that is not one becomes FREE (no limit applies),
        counts are clamped."""
        base = slot * FIELDS
        ints, floats = self.ints, self.floats
        state = ints[base + STATE]
        activity = self.signed[base + ACTIVITY]
        started = floats[base + STARTED]
        return Row(
            slot=slot,
            pid=ints[base + PID],
            state=State(state) if state in _STATES else State.FREE,
            busy=min(max(0, activity), _MAX_COUNT),
            events=min(abs(activity), _MAX_COUNT),
            connections=min(ints[base + CONNECTIONS], _MAX_COUNT),
            started=started if math.isfinite(started) else 0.0,
        )

    def counts(self, slot: int, servers: int) -> Counts:
        """Return a slot's counters, for its first ``servers`` servers."""
        base = self.counters_base(slot)
        values = [min(value, _MAX_COUNT) for value in self.ints[base : base + SERVER_COUNTERS + 2 * min(servers, MAX_SERVERS)]]
        per_server = values[SERVER_COUNTERS:]
        return Counts(
            closed=tuple(values[: len(Closed)]),
            connected_events=values[CONNECTED_EVENTS],
            close_events=values[CLOSE_EVENTS],
            headers_refused=values[HEADERS_REFUSED],
            open=tuple(per_server[0::2]),
            accepted=tuple(per_server[1::2]),
        )


class SlotWriter:
    """A worker's handle on its own slot; every method is a memory store or two.

    The event loop writes ACTIVITY itself, one store at a time, through ``signed`` at
    ``activity_index``: per event the event's number (counting from 1), and minus the
    number of events handled so far each time it waits.

    The counters are written once or twice per connection, from the loop's plain Python
    (``connset.py``): compiled, each method is a C store through a typed view of the
    words (``scoreboard.pxd``), where a memoryview's item access costs more than the rest
    of closing a connection.
    """

    __slots__ = ("ints", "signed", "base", "used_index", "counters", "_words", "_servers")

    def __init__(self, board: Scoreboard, slot: int) -> None:
        self.ints = board.ints
        self.signed = board.signed
        self.base = slot * FIELDS
        self.used_index = board.used_index
        self.counters = board.counters_base(slot)
        #: ``ints`` again, for the counters: compiled, a typed view of the same words.
        self._words = board.ints
        #: Index of server 0's count of open connections (its accepted ones are next).
        self._servers = self.counters + SERVER_COUNTERS

    def above_fair_share(self, connections: int, margin: float, slack: int = 1) -> bool:
        """Whether this worker holds more than ``margin`` times the average of the serving
        workers, plus ``slack`` connections."""
        ints = self.ints
        serving = total = 0
        used = min(ints[self.used_index], self.used_index // FIELDS)  # anyone may have scribbled on it
        for base in range(0, used * FIELDS, FIELDS):
            if ints[base + STATE] == _SERVING:
                serving += 1
                total += ints[base + CONNECTIONS]
        return serving > 1 and connections * serving > total * margin + serving * slack

    def others_serving(self) -> int:
        """How many other workers are serving and not inside a slow event themselves (and
        can take connections over)."""
        ints = self.ints
        used = min(ints[self.used_index], self.used_index // FIELDS)
        return sum(1 for base in range(0, used * FIELDS, FIELDS) if base != self.base and ints[base + STATE] == _SERVING)

    def set_state(self, state: State) -> None:
        self.ints[self.base + STATE] = state

    @property
    def activity_index(self) -> int:
        """Index into ``signed`` of ACTIVITY."""
        return self.base + ACTIVITY

    def set_connections(self, count: int) -> None:
        index: cython.Py_ssize_t = self.base + CONNECTIONS
        self._words[index] = count

    # -- counters: once per connection ------------------------------------------------------

    @property
    def lifecycle_index(self) -> int:
        """Index into ``ints`` of the count of CONNECTED events handed out (CLOSE's is next)."""
        return self.counters + CONNECTED_EVENTS

    def closed(self, why: Closed) -> None:
        reason: cython.Py_ssize_t = why
        self._words[self.counters + reason] += 1

    def header_refused(self) -> None:
        self.ints[self.counters + HEADERS_REFUSED] += 1

    def accepted(self, server: int, count: int) -> None:
        """This worker accepted ``count`` connections of server number ``server``."""
        number: cython.Py_ssize_t = server
        if 0 <= number < MAX_SERVERS:
            self._words[self._servers + 2 * number + 1] += count

    def opened(self, server: int, count: int = 1) -> None:
        """``count`` connections of server number ``server`` are open here now (accepted, or adopted)."""
        number: cython.Py_ssize_t = server
        if 0 <= number < MAX_SERVERS:
            self._words[self._servers + 2 * number] += count

    def left(self, server: int) -> None:
        """A connection of server number ``server`` closed or moved away."""
        number: cython.Py_ssize_t = server
        if 0 <= number < MAX_SERVERS:
            index: cython.Py_ssize_t = self._servers + 2 * number
            if self._words[index]:
                self._words[index] -= 1
