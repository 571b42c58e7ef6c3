"""Detaching the master from its terminal (``--daemon``)."""

from __future__ import annotations

import os


def daemonize() -> None:
    """Fork twice and start a new session; standard streams go to /dev/null.

    The working directory is kept, so relative paths in the config stay valid.
    """
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
