"""WHOAMI: answers every line with the client's address as the application sees it.

Behind a load balancer that sends a PROXY header (``proxy_protocol``), the answer is the
client's own address and port, not the balancer's: a quick check of the balancer's setup
(``printf 'who\\r\\n' | nc balancer 25`` prints what you connect from).  ``QUIT`` closes.
"""

from __future__ import annotations

from prefork_tcp import TcpEvent, TcpResponse, TcpWorker


def main(worker: TcpWorker) -> None:
    while (request := worker.wait_request()) is not None:
        if request.event is TcpEvent.DATA:
            if request.body.rstrip(b"\r\n").upper() == b"QUIT":
                worker.respond(b"bye\r\n", TcpResponse.RESPOND_CLOSE)
            else:
                worker.respond(f"{request.remote_address}\r\n")
        elif request.event is TcpEvent.CONNECTED:
            worker.read()
