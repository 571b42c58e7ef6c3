"""Detaching the master from its terminal (``--daemon``)."""

from __future__ import annotations

import os
from collections.abc import Callable


def daemonize() -> Callable[[int], None]:
    """Fork twice and start a new session; standard streams go to /dev/null.

    The process that called this waits, and exits with the code the daemon reports through
    the function returned (1 if the daemon dies first): a caller such as an init script
    learns whether the server came up (0 once a worker serves), not merely that a
    process was forked.  The working directory is kept, so relative paths in the config
    stay valid.
    """
    report_r, report_w = os.pipe()
    if os.fork():
        os.close(report_w)
        code = os.read(report_r, 1)
        os._exit(code[0] if code else 1)
    os.close(report_r)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)

    def report(code: int) -> None:
        nonlocal report_w
        if report_w < 0:
            return
        try:
            os.write(report_w, bytes([code & 0xFF]))
        except OSError:
            pass
        os.close(report_w)
        report_w = -1

    return report
