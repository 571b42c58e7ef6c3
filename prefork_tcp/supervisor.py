"""The limits the master enforces, as pure decisions about one scoreboard row."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from .config import PoolConfig
from .scoreboard import Row, State

#: RoadRunner's rule: each worker's max_jobs gets up to this much random extra,
#: so workers started together do not all retire together.
MAX_JOBS_JITTER = 0.15


class Verdict(NamedTuple):
    """What to do with a worker: ``"retire"`` (gracefully, keeping connections) or ``"kill"``."""

    action: str
    reason: str


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
    def needs_memory(self) -> bool:
        """Whether ``judge`` wants the worker's RSS (reading it costs a syscall)."""
        return self.max_worker_memory > 0


def jittered_max_jobs(max_jobs: int, rng: random.Random | None = None) -> int:
    """Return one worker's event budget: ``max_jobs`` plus up to 15% (0 stays 0)."""
    if max_jobs <= 0:
        return 0
    return max_jobs + (rng or random).randint(0, int(max_jobs * MAX_JOBS_JITTER))


def judge(row: Row, limits: Limits, now: float, max_jobs: int, rss_mb: float | None = None) -> Verdict | None:
    """Return what the master should do with the worker in ``row``, or None.

    ``max_jobs`` is this worker's own (jittered) budget; ``rss_mb`` its memory when
    ``limits.needs_memory``.  A stuck event is judged even for a retiring worker: a
    worker cannot hand its connections over while one of its events never ends.
    """
    if row.state not in (State.IDLE, State.BUSY, State.RETIRING):
        return None
    if limits.exec_ttl and row.busy_since and now - row.busy_since > limits.exec_ttl:
        return Verdict("kill", f"an event ran longer than exec_ttl ({limits.exec_ttl:g}s)")
    if row.state == State.RETIRING:
        return None
    if max_jobs and row.events >= max_jobs:
        return Verdict("retire", f"handled {row.events} events (max_jobs {max_jobs})")
    if limits.ttl and now - row.started > limits.ttl:
        return Verdict("retire", f"older than ttl ({limits.ttl:g}s)")
    if limits.idle_ttl and not row.busy_since and now - max(row.last_event, row.started) > limits.idle_ttl:
        return Verdict("retire", f"idle longer than idle_ttl ({limits.idle_ttl:g}s)")
    if limits.max_worker_memory and rss_mb is not None and rss_mb > limits.max_worker_memory:
        return Verdict("retire", f"uses {rss_mb:.0f} MB (max_worker_memory {limits.max_worker_memory} MB)")
    return None
