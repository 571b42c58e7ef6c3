"""The worker's event loop in-process, over a real socketpair: cases no client can time."""

from __future__ import annotations

import select
import socket

from prefork_tcp.api import TcpWorker
from prefork_tcp.connection import Connection
from prefork_tcp.framing import make_framer
from prefork_tcp.signals import SignalPipe
from prefork_tcp.workerloop import WorkerLoop


def test_an_answer_to_a_connection_dropped_meanwhile_is_discarded():
    # While the application handles a request, the loop may drop that connection (a quick
    # stop read while close_connection() waits for the master); its answer must go nowhere.
    channel, master_end = socket.socketpair()
    server_end, client_end = socket.socketpair()
    loop = WorkerLoop([], channel, SignalPipe(()), drain_timeout=1.0, high_water=1 << 20)
    server_end.setblocking(False)
    conn = Connection(server_end, "u-1", "default", "", make_framer(b"\r\n", 1 << 20))
    loop.conns[conn.fd] = conn
    loop.epoll.register(conn.fd, select.EPOLLIN)
    conn.mask = select.EPOLLIN
    conn.settle()
    worker = TcpWorker(loop)
    client_end.sendall(b"PING\r\n")
    assert worker.wait_request().body == b"PING\r\n"
    loop._drop(conn)
    worker.respond(b"+PONG\r\n")
    master_end.send(b"Q")  # then stop: the loop flushes the answer's connection first
    assert worker.wait_request().event.value == "CLOSE"
    assert worker.wait_request() is None
    client_end.settimeout(5)
    assert client_end.recv(100) == b""  # closed, nothing written
