"""RoadRunner's TCP worker example (spiral/roadrunner-tcp README), in Python.

Run it against the two-server config: ``prefork-tcp serve prefork_tcp.examples.roadrunner:main -c conf/smtp.toml``.
Connections from anywhere but 127.0.0.1 are closed on CONNECTED; the greeting is the
SMTP-style ``220``; on server ``server2`` every message is answered with a JSON
description of the request; on a server named ``tcp_access_point_1`` with
``Access denied`` and a close; elsewhere messages are read and left unanswered.
"""

from __future__ import annotations

import json

from prefork_tcp import TcpEvent, TcpResponse, TcpWorker


def main(worker: TcpWorker) -> None:
    while (request := worker.wait_request()) is not None:
        try:
            if request.event is TcpEvent.CONNECTED:
                # You can close the connection according to your restrictions.
                if not request.remote_address.startswith("127.0.0.1:"):
                    worker.close()
                    continue
                # Or send a response to the TCP connection, for example to an SMTP client.
                worker.respond(b"220 mailamie\r\n")
            elif request.event is TcpEvent.DATA:
                if request.server == "tcp_access_point_1":
                    # Send a response and close the connection.
                    worker.respond(b"Access denied\r\n", TcpResponse.RESPOND_CLOSE)
                elif request.server == "server2":
                    # Send a response and wait for the next request.
                    worker.respond(
                        json.dumps(
                            {
                                "remote_addr": request.remote_address,
                                "server": request.server,
                                "uuid": request.connection_uuid,
                                "body": request.body.decode("utf-8", "replace"),
                                "event": request.event.value,
                            }
                        )
                        + "\r\n"
                    )
                else:
                    worker.read()
            # TcpEvent.CLOSE: nothing to answer.
        except Exception as exc:
            if request.event is not TcpEvent.CLOSE:
                worker.respond(b"Something went wrong\r\n", TcpResponse.RESPOND_CLOSE)
            worker.error(str(exc))
