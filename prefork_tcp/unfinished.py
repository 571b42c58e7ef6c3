"""A worker-wide bound on the bytes held in unfinished messages.

``max_message_size`` bounds one connection's unfinished message; this bounds them all
together, so that many connections each parking most of a message cannot grow a worker
without limit. Only connections holding at least ``threshold`` bytes are counted, and
only when a read leaves them so: no cost for the whole messages of the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

#: Connections holding less than this in an unfinished message are not counted.
THRESHOLD = 4096
#: The bound: this, or twice the largest max_message_size, whichever is more.
MIN_LIMIT = 32 << 20

K = TypeVar("K", bound=Hashable)


def limit_for(max_message_sizes: list[int]) -> int:
    """The bound for a worker whose servers allow messages of these sizes."""
    return max([MIN_LIMIT] + [2 * size for size in max_message_sizes])


class UnfinishedBytes(Generic[K]):
    """The unfinished bytes of the connections holding many: a running total, recounted
    exactly only when it passes the limit."""

    def __init__(self, limit: int, threshold: int = THRESHOLD) -> None:
        self.limit = limit
        self.threshold = threshold
        self.sizes: dict[K, int] = {}
        self.total = 0

    def note(self, key: K, size: int, size_of: Callable[[K], int]) -> list[K]:
        """``key`` holds ``size`` unfinished bytes now; return the keys to close, largest
        first, to get back under the limit. ``size_of(key)`` tells each one's size now
        (0 once it is gone)."""
        if size < self.threshold and key not in self.sizes:
            return []
        self.total += size - self.sizes.get(key, 0)
        if size:
            self.sizes[key] = size
        else:
            self.sizes.pop(key, None)
        if self.total <= self.limit:
            return []
        self.sizes = {k: s for k in self.sizes if (s := size_of(k)) > 0}
        self.total = sum(self.sizes.values())
        victims: list[K] = []
        for k in sorted(self.sizes, key=self.sizes.__getitem__, reverse=True):
            if self.total <= self.limit:
                break
            victims.append(k)
            self.total -= self.sizes.pop(k)
        return victims
