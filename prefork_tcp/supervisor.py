"""The limits the master enforces: what it observes of each worker, and pure decisions on it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from .config import PoolConfig
from .scoreboard import Row, State

#: RoadRunner's rule: each worker's max_jobs gets up to this much random extra,
#: so workers started together do not all retire together.
MAX_JOBS_JITTER = 0.15


class Verdict(NamedTuple):
    """What to do with a worker: ``"retire"`` (gracefully, keeping connections) or ``"kill"``;
    why, for the log; and the limit's config key."""

    action: str
    reason: str
    limit: str


@dataclass(frozen=True)
class Limits:
    """The supervisor's limits; 0 disables each."""

    max_jobs: int = 0
    ttl: float = 0.0
    idle_ttl: float = 0.0
    max_worker_memory: int = 0  # MB
    exec_ttl: float = 0.0

    @classmethod
    def from_pool(cls, pool: PoolConfig) -> Limits:
        sup = pool.supervisor
        return cls(pool.max_jobs, sup.ttl, sup.idle_ttl, sup.max_worker_memory, sup.exec_ttl)

    @property
    def needs_busy(self) -> bool:
        """Whether workers must mark each event in the scoreboard as it starts.

        ``exec_ttl`` times the event in progress; ``idle_ttl`` must not take a worker
        busy in one long event for an idle one.
        """
        return self.exec_ttl > 0 or self.idle_ttl > 0

    @property
    def needs_memory(self) -> bool:
        """Whether ``judge`` wants the worker's RSS (reading it costs a syscall)."""
        return self.max_worker_memory > 0


def jittered_max_jobs(max_jobs: int, rng: random.Random | None = None) -> int:
    """Return one worker's event budget: ``max_jobs`` plus up to 15% (0 stays 0)."""
    if max_jobs <= 0:
        return 0
    return max_jobs + (rng or random).randint(0, int(max_jobs * MAX_JOBS_JITTER))


class Activity(NamedTuple):
    """When the master saw a worker's current event start and its last event happen."""

    busy_since: float  # 0: no event in progress
    last_event: float  # 0: none seen yet


class Watch:
    """The master's clock on the scoreboard: workers publish event numbers, not times.

    Each ``observe`` compares a slot with what was seen there before: an event number
    not seen before started now, a changed event count means events happened now.  So
    both times are late by at most the interval between two observations (``watch_tick``).
    """

    def __init__(self) -> None:
        #: slot -> (pid, event in progress, its start, events started, when that last changed)
        self._seen: dict[int, tuple[int, int, float, int, float]] = {}

    def observe(self, row: Row, now: float) -> Activity:
        pid, busy, busy_since, events, last_event = self._seen.get(row.slot, (row.pid, 0, 0.0, 0, 0.0))
        if pid != row.pid:  # a new worker in the slot
            busy, busy_since, events, last_event = 0, 0.0, 0, 0.0
        if row.busy != busy:
            busy, busy_since = row.busy, (now if row.busy else 0.0)
        if row.events != events:
            events, last_event = row.events, now
        self._seen[row.slot] = (row.pid, busy, busy_since, events, last_event)
        return Activity(busy_since, last_event)


def judge(row: Row, activity: Activity, limits: Limits, now: float, max_jobs: int, rss_mb: float | None = None) -> Verdict | None:
    """Return what the master should do with the worker in ``row``, or None.

    ``activity`` is what ``Watch`` timed of it; ``max_jobs`` this worker's own
    (jittered) budget; ``rss_mb`` its memory when ``limits.needs_memory``.  A stuck
    event is judged even for a retiring worker: a worker cannot hand its connections
    over while one of its events never ends.
    """
    if row.state not in (State.SERVING, State.SLOW, State.RETIRING):
        return None
    busy_since = activity.busy_since
    if limits.exec_ttl and busy_since and now - busy_since > limits.exec_ttl:
        return Verdict("kill", f"an event ran longer than exec_ttl ({limits.exec_ttl:g}s)", "exec_ttl")
    if row.state == State.RETIRING:
        return None
    if max_jobs and row.events >= max_jobs:
        return Verdict("retire", f"handled {row.events} events (max_jobs {max_jobs})", "max_jobs")
    if limits.ttl and now - row.started > limits.ttl:
        return Verdict("retire", f"older than ttl ({limits.ttl:g}s)", "ttl")
    if limits.idle_ttl and not row.busy and now - max(activity.last_event, row.started) > limits.idle_ttl:
        return Verdict("retire", f"idle longer than idle_ttl ({limits.idle_ttl:g}s)", "idle_ttl")
    if limits.max_worker_memory and rss_mb is not None and rss_mb > limits.max_worker_memory:
        return Verdict("retire", f"uses {rss_mb:.0f} MB (max_worker_memory {limits.max_worker_memory} MB)", "max_worker_memory")
    return None


class Backoff:
    """How long to wait after repeated failures: none for the first ``free`` ones, then
    ``base`` doubling up to ``cap``. A failure more than ``memory`` seconds after the
    previous one starts the count again."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, free: int = 0, memory: float = math.inf) -> None:
        self.base, self.cap, self.free, self.memory = base, cap, free, memory
        self.count = 0
        self.last = -math.inf

    def fail(self, now: float) -> float:
        """Count a failure at ``now``; return the delay before the next attempt."""
        if now - self.last > self.memory:
            self.count = 0
        self.count += 1
        self.last = now
        if self.count <= self.free:
            return 0.0
        return min(self.base * 2 ** (self.count - self.free - 1), self.cap)

    def reset(self) -> None:
        self.count = 0
