"""The open-files limit: raised to the hard limit at start (SPEC §6)."""

from __future__ import annotations

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
