"""A periodic timer as a file descriptor (Linux timerfd), for an epoll loop.

The worker loop sweeps its connections for timeouts when this descriptor becomes
readable, so it never reads the clock per event.  ``os.timerfd_create`` exists from
Python 3.13; before that the same two system calls are made through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import time

_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timespec(seconds: float) -> _Timespec:
    whole = int(seconds)
    return _Timespec(whole, int((seconds - whole) * 1e9))


class Ticker:
    """A descriptor that becomes readable every ``interval`` seconds until closed."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        create, settime = getattr(os, "timerfd_create", None), getattr(os, "timerfd_settime", None)
        if create is not None and settime is not None:  # Python 3.13+
            self.fd = create(_CLOCK_MONOTONIC, flags=_TFD_NONBLOCK | _TFD_CLOEXEC)
            settime(self.fd, initial=interval, interval=interval)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        spec = _Itimerspec(_timespec(interval), _timespec(interval))
        if libc.timerfd_settime(fd, 0, ctypes.byref(spec), None) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, "timerfd_settime failed")
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        """Return how many intervals passed since the last call (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except (BlockingIOError, InterruptedError):
            return 0
