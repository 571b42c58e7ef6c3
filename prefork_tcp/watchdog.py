"""The watchdog: one slow event must not delay the worker's other connections.

A worker serves its connections one event at a time, so an event that takes long (a
database query, a call to another service, a heavy computation) would hold up every
other connection of the worker.  The watchdog is a thread that looks every
``slow_event / 2`` at the request the application is handling.  When the application has
been inside the same one for ``slow_event``, it takes the loop (``gate.py``) and hands the
worker's other connections over to the other workers (``Worker.move_others``), which
serve them meanwhile; the slow connection stays, and its events stay in order.  The
master sends this worker no connection for a while (SLOW).

The application's thread pays nothing for this per event: the watchdog only compares the
current request with the one it saw last.  Its own cost is a wake-up every
``slow_event / 2`` (about 0.5% of a core per idle worker at the default 10 ms), and the
worker's descriptor table grown at start (``fdlimit.grow_table``).

It needs the interpreter's lock to look and to act: an event that waits on I/O releases
it, and one that computes gives it up every ``sys.getswitchinterval()`` (5 ms by
default), so such an event is noticed up to that much later.  While it moves
connections the switch interval is made short, so that the computing thread does not
make each of the watchdog's system calls wait that long.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import CodeType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import TcpWorker
    from .worker import Worker

log = logging.getLogger("prefork_tcp.worker")

#: The switch interval while connections move (see the module docstring).
MOVE_SWITCH_INTERVAL = 0.0002
#: While one event goes on, the master is told again this often that the worker is slow
#: (it remembers for ``arbiter.SLOW_MEMORY``), and anything handed to it meanwhile moves on.
SLOW_AGAIN = 1.0


class Watchdog(threading.Thread):
    """Moves connections away from one worker's slow events; see the module docstring."""

    def __init__(self, loop: Worker, worker: TcpWorker, slow_event: float, entry: CodeType) -> None:
        super().__init__(name="prefork-tcp watchdog", daemon=True)
        self.loop = loop
        self.worker = worker
        self.slow_event = slow_event
        #: The function that calls the application: frames below it are not the application's.
        self.entry = entry
        self.main_id = threading.get_ident()
        self.stopped = threading.Event()

    def run(self) -> None:
        seen: object = None  # the request seen last, and since when
        since = told = time.monotonic()
        handled: object = None  # the last request whose neighbours were moved
        while not self.stopped.wait(self.slow_event / 2):
            request = self.worker.current_request()
            now = time.monotonic()
            if request is not seen:
                seen, since = request, now
                continue
            if request is None or now - since < self.slow_event:
                continue
            if request is handled and now - told < SLOW_AGAIN:
                continue
            try:
                if self.move(request):  # else the loop ran: try again next time
                    handled, told = request, now
            except Exception:  # a bug here must not end the worker
                handled, told = request, now
                log.exception("watchdog: moving connections away from a slow event failed")

    def move(self, request: object) -> bool:
        """Move the other connections away if the application is still inside ``request``
        (and, while it is, tell the master again that this worker is slow); return whether
        the loop could be taken."""
        gate = self.loop.gate
        if not gate.try_take(self.main_id, self.entry, lambda: self.worker.hold_for(gate), self.worker.in_loop):
            return False
        switch = sys.getswitchinterval()
        sys.setswitchinterval(MOVE_SWITCH_INTERVAL)
        try:
            if self.worker.current_request() is not request or self.stopped.is_set():
                return True
            moved = self.loop.move_others(self.worker.current_connection())
        finally:
            sys.setswitchinterval(switch)
            gate.give_back()
        if moved:
            log.info("an event has run for more than %gms: %d other connections moved to other workers", self.slow_event * 1000, moved)
        return True

    def stop(self) -> None:
        """Stop acting (from the application's thread, out of the loop's code); returns once
        a move in progress is over."""
        self.stopped.set()
        self.loop.gate.wait()
