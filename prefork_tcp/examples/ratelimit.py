"""RATELIMIT: closes the connection of an address that sends too much, whatever worker or
machine it reaches.

A fixed window per client address (the IP): each message increments
``rate:ADDRESS:WINDOW`` in the storage ``[kv.counts]`` (it expires with its window).
Within the limit a message is echoed; past it the client gets ``-ERR rate limit`` and the
connection is closed, on every connection from that address until the window ends.
$RATELIMIT_MESSAGES (default 100) messages per $RATELIMIT_WINDOW seconds (default 10).
"""

from __future__ import annotations

import os
import time

from prefork_tcp import TcpEvent, TcpResponse, TcpWorker, kv

LIMIT = int(os.environ.get("RATELIMIT_MESSAGES", "100"))
WINDOW = float(os.environ.get("RATELIMIT_WINDOW", "10"))


def main(worker: TcpWorker) -> None:
    counts = kv.storage("counts")
    while (request := worker.wait_request()) is not None:
        if request.event is TcpEvent.CONNECTED:
            worker.read()
        elif request.event is TcpEvent.DATA:
            address = request.remote_address.rpartition(":")[0] or request.remote_address
            window = int(time.time() // WINDOW)
            key = f"rate:{address}:{window}"
            try:
                sent = counts.incr(key)
                if sent == 1:
                    counts.expire([key], 2 * WINDOW)  # the window's counter goes with it
            except kv.StorageError:
                sent = 0  # fail open: an unreachable storage does not close every connection
            if sent > LIMIT:
                worker.respond(b"-ERR rate limit\r\n", TcpResponse.RESPOND_CLOSE)
            else:
                worker.respond(request.body)
