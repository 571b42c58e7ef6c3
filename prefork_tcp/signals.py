"""Signals as data: handlers do nothing, the interpreter writes each signal's number into
a pipe, and the owner's main loop reads the numbers and acts on them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable


class SignalPipe:
    """Routes ``handled`` signals into a non-blocking pipe; ``ignored`` ones are dropped."""

    def __init__(self, handled: Iterable[int], ignored: Iterable[int] = ()) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        for signum in handled:
            signal.signal(signum, _noop)
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def fileno(self) -> int:
        """The read end, to watch with select or epoll."""
        return self._read_fd

    def drain(self) -> list[int]:
        """Return the numbers of the signals received since the last call, oldest first."""
        try:
            return list(os.read(self._read_fd, 256))
        except (BlockingIOError, InterruptedError):
            return []

    def close(self) -> None:
        """Stop routing signals here (a forked child sets up its own pipe)."""
        signal.set_wakeup_fd(-1)
        os.close(self._read_fd)
        os.close(self._write_fd)


def _noop(signum: int, frame: object) -> None:
    """The wakeup pipe already holds the signal number; nothing else to do here."""
