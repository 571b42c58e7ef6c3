"""Per-worker state in shared memory: workers write it without syscalls, the master reads it.

The master maps an anonymous shared region before forking; every worker gets one slot
of eight 8-byte fields (64 bytes: one cache line, so workers never share a line).
Aligned 8-byte stores and loads are atomic on the platforms this runs on, so no lock is
needed: each field has exactly one writer (the worker owning the slot, or the master
while the slot is free).

Workers write no times: a clock read per event is a noticeable share of handing an event
out.  The master times what it observes instead (``supervisor.Watch``).
"""

from __future__ import annotations

import enum
import math
import mmap
from dataclasses import dataclass

FIELDS = 8
SLOT_BYTES = FIELDS * 8

# Field offsets within a slot; 5 to 7 are spare.
PID = 0  # Q
STATE = 1  # Q: a State
ACTIVITY = 2  # q: -N while the worker waits after N events; +N while event N runs (marked with exec_ttl only)
CONNECTIONS = 3  # Q: open connections
STARTED = 4  # d: monotonic time the worker was started


class State(enum.IntEnum):
    FREE = 0
    BOOTING = 1
    SERVING = 2  # ready, taking connections (busy or not: see ACTIVITY)
    RETIRING = 3  # handing connections over, or stopping
    SLOW = 4  # serving, inside an event that runs long: its other connections moved away


_STATES = frozenset(int(state) for state in State)
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


class Scoreboard:
    """``slots`` slots of shared memory; create it in the master before forking."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # One more 8-byte field after the slots: how many slots from the start are (or were) used.
        self._map = mmap.mmap(-1, slots * SLOT_BYTES + 8, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
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

    def set_pid(self, slot: int, pid: int) -> None:
        self.ints[slot * FIELDS + PID] = pid

    def reset(self, slot: int) -> None:
        """Zero a slot (the master does this when its worker is gone)."""
        base = slot * FIELDS
        for field in range(FIELDS):
            self.ints[base + field] = 0

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


class SlotWriter:
    """A worker's handle on its own slot; every method is a memory store or two.

    The event loop writes ACTIVITY itself, one store at a time, through ``signed`` at
    ``activity_index``: per event the event's number (counting from 1), and minus the
    number of events handled so far each time it waits.
    """

    __slots__ = ("ints", "signed", "base", "used_index")

    def __init__(self, board: Scoreboard, slot: int) -> None:
        self.ints = board.ints
        self.signed = board.signed
        self.base = slot * FIELDS
        self.used_index = board.used_index

    def above_fair_share(self, connections: int, margin: float) -> bool:
        """Whether this worker holds more than ``margin`` times the average of the serving workers."""
        ints = self.ints
        serving = total = 0
        used = min(ints[self.used_index], self.used_index // FIELDS)  # anyone may have scribbled on it
        for base in range(0, used * FIELDS, FIELDS):
            if ints[base + STATE] == State.SERVING:
                serving += 1
                total += ints[base + CONNECTIONS]
        return serving > 1 and connections * serving > total * margin + serving

    def others_serving(self) -> int:
        """How many other workers are serving and not inside a slow event themselves (and
        can take connections over)."""
        ints = self.ints
        used = min(ints[self.used_index], self.used_index // FIELDS)
        return sum(1 for base in range(0, used * FIELDS, FIELDS) if base != self.base and ints[base + STATE] == State.SERVING)

    def set_state(self, state: State) -> None:
        self.ints[self.base + STATE] = state

    @property
    def activity_index(self) -> int:
        """Index into ``signed`` of ACTIVITY."""
        return self.base + ACTIVITY

    def set_connections(self, count: int) -> None:
        self.ints[self.base + CONNECTIONS] = count
