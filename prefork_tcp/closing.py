"""Closing a connection by uuid across workers: ask every worker, settle on the answers.

Pure bookkeeping for the master: which workers still owe an answer to which request,
and whom to tell the result.  A request settles when every asked worker answered, died,
or the deadline passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Done = Callable[[bool], None]


@dataclass
class _Pending:
    uuid: str
    waiting: set[int]
    deadline: float
    done: Done
    found: bool = False


class CloseRequests:
    """Close requests in flight, by id."""

    def __init__(self) -> None:
        self.pending: dict[int, _Pending] = {}
        self._next_id = 0

    def start(self, uuid: str, pids: set[int], deadline: float, done: Done) -> int | None:
        """Register a request to ask ``pids``; return its id (None: nobody to ask, settled at once)."""
        if not pids:
            done(False)
            return None
        self._next_id += 1
        self.pending[self._next_id] = _Pending(uuid, set(pids), deadline, done)
        return self._next_id

    def answer(self, request_id: int, pid: int, found: bool) -> None:
        """Record one worker's answer."""
        request = self.pending.get(request_id)
        if request is None:
            return
        request.found = request.found or found
        request.waiting.discard(pid)
        if found or not request.waiting:
            self._settle(request_id)

    def settle_for(self, uuid: str) -> bool:
        """Connection ``uuid`` turned up on its way between workers: settle the requests
        for it as found; return whether there were any (the master then closes it when a
        worker adopts it)."""
        ids = [request_id for request_id, request in self.pending.items() if request.uuid == uuid]
        for request_id in ids:
            self.pending[request_id].found = True
            self._settle(request_id)
        return bool(ids)

    def gone(self, pid: int) -> None:
        """A worker exited: it will not answer."""
        for request_id, request in list(self.pending.items()):
            request.waiting.discard(pid)
            if not request.waiting:
                self._settle(request_id)

    def expire(self, now: float) -> None:
        """Settle the requests whose deadline passed, with what is known."""
        for request_id, request in list(self.pending.items()):
            if now >= request.deadline:
                self._settle(request_id)

    def _settle(self, request_id: int) -> None:
        request = self.pending.pop(request_id)
        request.done(request.found)
