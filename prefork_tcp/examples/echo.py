"""Echo: every message comes back as it was sent, delimiter included."""

from __future__ import annotations

from prefork_tcp import TcpEvent, TcpWorker


def main(worker: TcpWorker) -> None:
    while (request := worker.wait_request()) is not None:
        if request.event is TcpEvent.CONNECTED:
            worker.read()
        elif request.event is TcpEvent.DATA:
            worker.respond(request.body)
