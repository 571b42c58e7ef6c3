"""When a worker accepts: the fair-share pause applies only to a worker holding many
connections (``FAIR_SHARE_FLOOR``); with few, short connections a pause only delayed the
next one (redis-benchmark -k 0 with 2 workers measured 12 times slower)."""

from __future__ import annotations

import logging
import select
import socket

import pytest

from prefork_tcp.accepting import FAIR_SHARE_FLOOR, Acceptor
from prefork_tcp.logs import Throttle
from prefork_tcp.scoreboard import Scoreboard, SlotWriter, State
from prefork_tcp.sockets import Address, Listener


@pytest.fixture
def acceptor():
    board = Scoreboard(2)
    mine = SlotWriter(board, board.claim(1, 0.0))
    other = SlotWriter(board, board.claim(2, 0.0))
    for writer in (mine, other):
        writer.set_state(State.SERVING)  # the other holds nothing: this worker is always above its share
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    epoll = select.epoll()
    accepting = Acceptor(
        [Listener("s", Address("tcp", "127.0.0.1", 0), sock, b"\n", 100, 4096)], epoll, mine, 0, 1 << 20, Throttle(logging.getLogger("t"))
    )
    accepting.sync()
    clients: list[socket.socket] = []
    yield accepting, sock, clients
    for client in clients:
        client.close()
    sock.close()
    epoll.close()


def connect(sock: socket.socket, clients: list[socket.socket]) -> None:
    clients.append(socket.create_connection(sock.getsockname()))


@pytest.mark.parametrize("held, pauses", [(0, False), (FAIR_SHARE_FLOOR - 2, False), (FAIR_SHARE_FLOOR, True), (500, True)])
def test_a_worker_above_its_share_pauses_only_from_the_floor_on(acceptor, held, pauses):
    accepting, sock, clients = acceptor
    connect(sock, clients)
    new = accepting.accept(sock.fileno(), held, 0.0)
    assert len(new) == 1
    assert bool(accepting.resume_at) == pauses
    assert accepting.armed != pauses  # paused: out of the epoll set until resume_at
    for conn in new:
        conn.sock.close()
