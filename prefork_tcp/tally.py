"""What the master counts for the metrics (SPEC §8), from the scoreboard and its own eyes.

Live workers' counters are in their scoreboard slots; when a worker is gone, the master
adds its slot's final counters here before the slot is reused.  So a total is what the
gone workers did plus what the live ones did so far, and what the master keeps is bounded
by the number of servers and reasons, however many workers come and go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .scoreboard import Closed, Counts, Row

#: Why workers were replaced (``prefork_tcp_worker_recycles_total{reason}``): the limit's
#: config key, or what asked for it.
RECYCLE_REASONS = (
    "max_jobs",
    "ttl",
    "idle_ttl",
    "max_worker_memory",
    "exec_ttl",
    "app_error",  # the application raised: the worker handed its other connections over
    "reload",  # HUP or ``prefork-tcp reload`` (and the rollback of a reload that failed)
    "reset",  # ``prefork-tcp reset``
    "scale_down",  # TTOU or ``prefork-tcp remove-worker``
    "upgrade",  # handed its connections to a new master (counted by the old one)
    "error",  # it sent the master garbage
    "died",  # it ended without being asked (killed from outside, the OOM killer, a crash)
)
CLOSE_REASONS = tuple(reason.name.lower() for reason in Closed)


@dataclass
class Totals:
    """The master's running totals; see the module docstring."""

    closed: list[int] = field(default_factory=lambda: [0] * len(Closed))
    connected_events: int = 0
    data_events: int = 0
    close_events: int = 0
    headers_refused: int = 0
    #: Connections accepted, by server name.
    accepted: dict[str, int] = field(default_factory=dict)
    recycles: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECYCLE_REASONS, 0))
    #: DATA events counted so far for each live worker (by pid): never less than before.
    _data_seen: dict[int, int] = field(default_factory=dict)

    def data_of(self, pid: int, row: Row, counts: Counts) -> int:
        """A live worker's DATA events: the events it handed out less its CONNECTED and
        CLOSE ones. The worker publishes its event count when it waits (or as each event
        starts), its CONNECTED and CLOSE counts as they happen: between two waits the
        difference may lag, never go back."""
        data = max(0, row.events - counts.connected_events - counts.close_events, self._data_seen.get(pid, 0))
        self._data_seen[pid] = data
        return data

    def absorb(self, pid: int, row: Row, counts: Counts, servers: tuple[str, ...]) -> None:
        """A worker is gone: keep what its slot counted (``servers``: its servers, in the
        order of its counters). Connections it still held died with it (SIGKILL, a
        crash): the kernel closed them, and they count as closed by an error."""
        for reason, count in enumerate(counts.closed):
            self.closed[reason] += count
        self.closed[Closed.ERROR] += sum(counts.open)
        self.data_events += self.data_of(pid, row, counts)
        del self._data_seen[pid]
        self.connected_events += counts.connected_events
        self.close_events += counts.close_events
        self.headers_refused += counts.headers_refused
        for name, count in zip(servers, counts.accepted, strict=True):
            self.accepted[name] = self.accepted.get(name, 0) + count

    def recycled(self, reason: str) -> None:
        self.recycles[reason if reason in self.recycles else "died"] += 1

    def forget_servers(self, keep: set[str]) -> None:
        """Drop the totals of servers no longer configured nor served by a live worker."""
        for name in [name for name in self.accepted if name not in keep]:
            del self.accepted[name]
