"""The master's pid file: refuse a live one, write ours, remove it if it is still ours."""

from __future__ import annotations

import os


class PidfileError(Exception):
    """The pid file names a process that is still running."""


def read(path: str) -> int | None:
    """Return the pid stored in ``path``, or None when there is no readable pid."""
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip() or "0") or None
    except (OSError, ValueError):
        return None


def write(path: str) -> None:
    """Write this process's pid to ``path`` unless it names another live process."""
    pid = read(path)
    if pid and pid != os.getpid() and _alive(pid):
        raise PidfileError(f"{path}: process {pid} is still running")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove(path: str) -> None:
    """Delete ``path`` if it still holds this process's pid."""
    if read(path) == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
