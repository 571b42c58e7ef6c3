"""Per-worker state in shared memory: workers write it without syscalls, the master reads it.

The master maps an anonymous shared region before forking; every worker gets one slot
of eight 8-byte fields. Aligned 8-byte stores and loads are atomic on the platforms this
runs on, so no lock is needed: each field has exactly one writer (the worker owning the
slot, or the master while the slot is free).
"""

from __future__ import annotations

import enum
import mmap
from dataclasses import dataclass

FIELDS = 8
SLOT_BYTES = FIELDS * 8

# Field offsets within a slot.
PID = 0  # Q
STATE = 1  # Q: a State
BUSY_SINCE = 2  # d: monotonic time the current event was handed out; 0 when idle
LAST_EVENT = 3  # d: monotonic time the last event was handed out (0: none yet)
EVENTS = 4  # Q: events handed to the application
CONNECTIONS = 5  # Q: open connections
HEARTBEAT = 6  # d: monotonic time the worker's loop last woke up
STARTED = 7  # d: monotonic time the worker was started


class State(enum.IntEnum):
    FREE = 0
    BOOTING = 1
    IDLE = 2
    BUSY = 3
    RETIRING = 4


@dataclass(frozen=True)
class Row:
    """A snapshot of one slot, as the master sees it."""

    slot: int
    pid: int
    state: State
    busy_since: float
    last_event: float
    events: int
    connections: int
    heartbeat: float
    started: float


class Scoreboard:
    """``slots`` slots of shared memory; create it in the master before forking."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # One more 8-byte field after the slots: how many slots from the start are (or were) used.
        self._map = mmap.mmap(-1, slots * SLOT_BYTES + 8, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.ints = memoryview(self._map).cast("Q")
        self.floats = memoryview(self._map).cast("d")

    def claim(self, pid: int, started: float) -> int:
        """Return a free slot, now marked booting for ``pid``; raises when all are taken."""
        ints = self.ints
        for slot in range(self.slots):
            base = slot * FIELDS
            if ints[base + STATE] == State.FREE:
                self.reset(slot)
                ints[self.used_index] = max(ints[self.used_index], slot + 1)
                ints[base + PID] = pid
                self.floats[base + STARTED] = started
                self.floats[base + HEARTBEAT] = started
                ints[base + STATE] = State.BOOTING
                return slot
        raise RuntimeError(f"all {self.slots} scoreboard slots are in use")

    @property
    def used_index(self) -> int:
        """Index into ``ints`` of the number of slots in use from the start (a bound for scans)."""
        return self.slots * FIELDS

    def set_pid(self, slot: int, pid: int) -> None:
        self.ints[slot * FIELDS + PID] = pid

    def reset(self, slot: int) -> None:
        """Zero a slot (the master does this when its worker is gone)."""
        base = slot * FIELDS
        for field in range(FIELDS):
            self.ints[base + field] = 0

    def row(self, slot: int) -> Row:
        base = slot * FIELDS
        ints, floats = self.ints, self.floats
        return Row(
            slot=slot,
            pid=ints[base + PID],
            state=State(ints[base + STATE]),
            busy_since=floats[base + BUSY_SINCE],
            last_event=floats[base + LAST_EVENT],
            events=ints[base + EVENTS],
            connections=ints[base + CONNECTIONS],
            heartbeat=floats[base + HEARTBEAT],
            started=floats[base + STARTED],
        )


class SlotWriter:
    """A worker's handle on its own slot; every method is a few memory stores.

    Per event the loop stores only busy_since (``floats[busy_index]``); the event count
    and the time of the last event are published when it goes idle, once per poll.
    """

    __slots__ = ("ints", "floats", "base", "used_index")

    def __init__(self, board: Scoreboard, slot: int) -> None:
        self.ints = board.ints
        self.floats = board.floats
        self.base = slot * FIELDS
        self.used_index = board.used_index

    def above_fair_share(self, connections: int, margin: float) -> bool:
        """Whether this worker holds more than ``margin`` times the average of the serving workers."""
        ints = self.ints
        serving = total = 0
        for base in range(0, ints[self.used_index] * FIELDS, FIELDS):
            if ints[base + STATE] == State.IDLE:
                serving += 1
                total += ints[base + CONNECTIONS]
        return serving > 1 and connections * serving > total * margin + serving

    def set_state(self, state: State) -> None:
        self.ints[self.base + STATE] = state

    @property
    def busy_index(self) -> int:
        """Index into ``floats`` of busy_since: the event loop stores the time there per event."""
        return self.base + BUSY_SINCE

    def went_idle(self, events: int) -> None:
        """Publish the events handled so far and mark the worker idle (before it waits)."""
        base, floats = self.base, self.floats
        if floats[base + BUSY_SINCE]:
            floats[base + LAST_EVENT] = floats[base + BUSY_SINCE]
            floats[base + BUSY_SINCE] = 0.0
        self.ints[base + EVENTS] = events

    def set_connections(self, count: int) -> None:
        self.ints[self.base + CONNECTIONS] = count

