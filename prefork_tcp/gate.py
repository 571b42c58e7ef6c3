"""Who may touch a worker's loop: the application's thread, or the watchdog.

The loop's state (connections, the event queue, the epoll set, the channel) belongs to
the application's thread while it runs the loop's code: ``TcpWorker.wait_request`` and
the answers that reach the loop.  While that thread is inside the application's own code
(one event), the watchdog may take the loop over to move the other connections away
(``watchdog.py``).

The application's thread pays two stores per event: ``TcpWorker`` raises its own flag
(``TcpWorker.in_loop()``) while it takes the next event (the loop's code, which may sit in
``epoll_wait``) and around the rarer ways into the loop.  The watchdog does the rest, in
this order: it raises ``moving``, then looks at that flag and at the application's
thread's stack (``sys._current_frames``); if the flag is up or a frame of the loop or of
``TcpWorker`` is on the stack, that thread may be inside the loop, and the watchdog backs
off.  Otherwise the thread is in the application's code, and every way back into the
loop waits while ``moving`` is up: ``TcpWorker.hold_for`` puts a waiting step in front of
the next ``wait_request`` (before the look), and the rarer ways in (an answer that
closes, ``error``, ``close_connection``) look at ``moving``.  The compiled core
(``compiled.py``) runs the loop and ``TcpWorker`` without Python frames: there the flag
is what tells; the frames catch the loop's plain Python code.
(A lock taken and released around every event cost 12% of a request, the flag kept on
the ``Gate`` 1.9%, and kept on ``TcpWorker`` itself 1.3% as plain Python and nothing
measurable compiled; ``scripts/hotpath.py --callgrind``.)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType

#: Modules whose code is the application's, not the loop's.
_APPLICATION_PACKAGES = ("prefork_tcp.examples.",)


class Gate:
    """The flag, the event the application's thread waits on, and the stack test."""

    __slots__ = ("done", "moving")

    def __init__(self) -> None:
        #: The watchdog has the loop, or is about to.
        self.moving = False
        #: Set whenever the watchdog lets go.
        self.done = threading.Event()
        self.done.set()

    def wait(self) -> None:
        """The application's thread found ``moving``: wait until the watchdog lets go."""
        while self.moving:
            self.done.wait()

    def try_take(self, thread_id: int, entry: CodeType, hold: Callable[[], None], inside: Callable[[], bool]) -> bool:
        """Take the loop if thread ``thread_id`` is in the application's code, above the
        frame of ``entry`` (the function that called the application).

        In this order: ``moving`` goes up, ``hold()`` makes the next ``wait_request`` wait
        for it, and only then are ``inside()`` (``TcpWorker.in_loop``) and the stack looked
        at, so that the thread cannot slip into the loop between the look and the hold (it
        raises its flag before it takes its next event, and the hold is on that event).
        """
        self.done.clear()
        self.moving = True
        hold()
        if inside() or in_loop(sys._current_frames().get(thread_id), entry):
            self.give_back()
            return False
        return True

    def give_back(self) -> None:
        self.moving = False
        self.done.set()


def in_loop(frame: FrameType | None, entry: CodeType) -> bool:
    """Whether any frame from ``frame`` down to the one running ``entry`` is prefork_tcp's
    own (the loop's, or ``TcpWorker``'s); True when that cannot be told."""
    while frame is not None:
        if frame.f_code is entry:
            return False
        name = frame.f_globals.get("__name__", "")
        if name.startswith("prefork_tcp.") and not name.startswith(_APPLICATION_PACKAGES):
            return True
        frame = frame.f_back
    return True  # not below the application's entry: not the thread we watch
