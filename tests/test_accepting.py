"""When a worker accepts: the fair-share pause applies only to a worker more than
``FAIR_SHARE_SLACK`` connections above its share; a few short connections never pause it
(a pause for them only delayed the next one: redis-benchmark -k 0 -c 4 with 2 workers
measured 12 times slower), and a pause ends by itself."""

from __future__ import annotations

import logging
import select
import socket

import pytest

from prefork_tcp.accepting import ACCEPT_YIELD, FAIR_SHARE_SLACK, Acceptor
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


# The other worker holds nothing: this one's share is 0, and it pauses above the slack.
@pytest.mark.parametrize("held, pauses", [(0, False), (FAIR_SHARE_SLACK - 1, False), (FAIR_SHARE_SLACK, True), (100, True)])
def test_a_worker_above_its_share_pauses_only_past_the_slack(acceptor, held, pauses):
    accepting, sock, clients = acceptor
    connect(sock, clients)
    new = accepting.accept(sock.fileno(), held, 0.0)  # it then holds held + 1
    assert len(new) == 1
    assert bool(accepting.resume_at) == pauses
    assert accepting.armed != pauses  # paused: out of the epoll set until resume_at
    accepting.expire(accepting.resume_at + ACCEPT_YIELD)
    assert accepting.armed and not accepting.resume_at  # and back once the pause is over
    for conn in new:
        conn.sock.close()


class CountedEpoll:
    """A real epoll set that counts the changes made to it."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.changes = 0

    def register(self, fd: int, mask: int) -> None:
        self.changes += 1
        self.epoll.register(fd, mask)

    def unregister(self, fd: int) -> None:
        self.changes += 1
        self.epoll.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self.epoll.poll(timeout)


@pytest.mark.parametrize("other_state, rearms", [(State.SERVING, True), (State.RETIRING, False), (State.FREE, False)])
def test_a_worker_moves_behind_the_others_after_accepting_only_when_another_serves(other_state, rearms):
    """EPOLLEXCLUSIVE wakes the first worker waiting on a listener: after accepting, a
    worker moves its entry behind the others' (two system calls), but alone it stays."""
    board = Scoreboard(2)
    mine = SlotWriter(board, board.claim(1, 0.0))
    mine.set_state(State.SERVING)
    SlotWriter(board, board.claim(2, 0.0)).set_state(other_state)
    mine.set_connections(0)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    epoll = CountedEpoll()
    accepting = Acceptor(
        [Listener("s", Address("tcp", "127.0.0.1", 0), sock, b"\n", 100, 4096)], epoll, mine, 0, 1 << 20, Throttle(logging.getLogger("t"))
    )  # type: ignore[arg-type]  # an epoll set, counted
    accepting.sync()
    client = socket.create_connection(sock.getsockname())
    assert epoll.poll(10)  # the connection is there to be taken
    before = epoll.changes
    new = accepting.accept(sock.fileno(), 0, 0.0)
    assert len(new) == 1 and accepting.armed and not accepting.resume_at
    assert epoll.changes - before == (2 if rearms else 0)
    for conn in new:
        conn.sock.close()
    for s in (client, sock):
        s.close()
    epoll.epoll.close()
