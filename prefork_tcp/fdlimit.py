"""The open-files limit: raised to the hard limit at start (SPEC §6)."""

from __future__ import annotations

import fcntl
import os
import resource


def raise_open_files() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return (before, after).

    An unlimited hard limit is capped by the kernel's ``fs.nr_open``.  Forked workers
    inherit the result.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


#: Descriptor slots a worker's table is grown to before it starts a second thread.
TABLE_SLOTS = 16384


def grow_table(slots: int = TABLE_SLOTS) -> None:
    """Grow this process's descriptor table to ``slots`` (or the open-files limit) now.

    The kernel grows the table by doubling as descriptors are opened, and in a process
    with more than one thread each growth waits for an RCU grace period: milliseconds in
    which a worker serves nobody, several times over while a flood of connections comes
    in.  Grown while the worker has one thread, it costs nothing and never shrinks.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = min(slots, soft) - 1 if soft != resource.RLIM_INFINITY else slots - 1
    if highest < 3:
        return
    try:
        fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, highest)  # the lowest free one from there
    except OSError:
        return
    os.close(fd)
