"""PING: answers each inline ``PING`` with ``+PONG``, so ``redis-benchmark -t ping_inline`` can drive it.

Any other message gets a Redis error line, and ``QUIT`` closes the connection.
"""

from __future__ import annotations

from prefork_tcp import TcpEvent, TcpResponse, TcpWorker

PING = b"PING\r\n"
PONG = b"+PONG\r\n"


def main(worker: TcpWorker) -> None:
    data, connected = TcpEvent.DATA, TcpEvent.CONNECTED
    while True:
        request = worker.wait_request()
        if request is None:
            return
        body = request.body  # CONNECTED and CLOSE have an empty body
        if body == PING:
            worker.respond(PONG)
        elif request.event is data:
            command = body.rstrip(b"\r\n").upper()
            if command == b"PING":
                worker.respond(PONG)
            elif command == b"QUIT":
                worker.respond(b"+OK\r\n", TcpResponse.RESPOND_CLOSE)
            else:
                worker.respond(b"-ERR unknown command\r\n")
        elif request.event is connected:
            worker.read()
