"""An application whose events are sometimes slow, as real ones are (a database query, a
call to another service, a heavy computation).

Line protocol: ``PING`` answers ``+PONG``; ``SLEEP <ms>`` blocks that long with the GIL
released (I/O) and ``BURN <ms>`` computes that long with the GIL held (CPU), then both
answer ``+OK``; anything else answers ``-ERR``.  ``scripts/hol.py`` drives it to show
that one connection's slow events do not delay the worker's other connections.
"""

from __future__ import annotations

import time

from prefork_tcp import TcpEvent, TcpWorker


def burn(seconds: float) -> None:
    """Keep the CPU (and the GIL) busy for ``seconds``."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sum(range(200))


def main(worker: TcpWorker) -> None:
    while (request := worker.wait_request()) is not None:
        if request.event is not TcpEvent.DATA:
            if request.event is TcpEvent.CONNECTED:
                worker.read()
            continue
        verb, _, arg = request.body.strip().partition(b" ")
        if verb == b"PING":
            worker.respond(b"+PONG\r\n")
        elif verb in (b"SLEEP", b"BURN") and arg.isdigit():
            (time.sleep if verb == b"SLEEP" else burn)(int(arg) / 1000)
            worker.respond(b"+OK\r\n")
        else:
            worker.respond(b"-ERR\r\n")
