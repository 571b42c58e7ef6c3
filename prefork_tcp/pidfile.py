"""The master's pid file: refuse a live one, write ours, remove it if it is still ours."""

from __future__ import annotations

import contextlib
import os
import tempfile


class PidfileError(Exception):
    """The pid file names a process that is still running."""


def read(path: str) -> int | None:
    """Return the pid stored in ``path``, or None when there is no readable pid."""
    try:
        with open(path, encoding="ascii") as fh:
            pid = int(fh.read(64).strip() or "0")
    except (OSError, ValueError):
        return None
    return pid if 0 < pid < 2**31 else None  # kill(2) takes neither 0, -1 nor a pid beyond pid_t


def write(path: str, replacing: int = 0) -> None:
    """Write this process's pid to ``path`` unless it names another live process
    (other than ``replacing``: the master this one takes over from).

    The pid goes to a fresh temporary file beside ``path`` (created with O_EXCL, so never
    through a symlink someone planted there), which then replaces ``path`` atomically.
    """
    pid = read(path)
    if pid and pid not in (os.getpid(), replacing) and _alive(pid):
        raise PidfileError(f"{path}: process {pid} is still running")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
            os.fchmod(fh.fileno(), 0o644)  # mkstemp makes it 0600; a pid file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
