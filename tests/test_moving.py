"""Moving a slow event's neighbours away, in-process over real socketpairs (``Worker.move_others``).

The test's thread plays the watchdog (it calls ``move_others`` while "the application" is
inside an event of the kept connection) and a second thread plays the master.
"""

from __future__ import annotations

import os
import select
import socket
import threading

import pytest

from prefork_tcp import handoff
from prefork_tcp.channel import Channel, Kind
from prefork_tcp.connection import Connection
from prefork_tcp.events import TcpEvent
from prefork_tcp.framing import make_framer
from prefork_tcp.scoreboard import STATE, Scoreboard, SlotWriter, State
from prefork_tcp.signals import SignalPipe
from prefork_tcp.worker import Worker

CONNECTED, DATA = TcpEvent.CONNECTED, TcpEvent.DATA
CLIENTS: list[socket.socket] = []


def worker_with(count: int, other: State = State.SERVING) -> tuple[Worker, Channel, list[Connection]]:
    """A worker holding ``count`` connections, and one other worker in state ``other``."""
    board = Scoreboard(2)
    mine = board.claim(1, 0.0)
    SlotWriter(board, board.claim(2, 0.0)).set_state(other)
    channel, master_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = Worker([], channel, SignalPipe(()), drain_timeout=1.0, high_water=1 << 20, slot=SlotWriter(board, mine))
    loop.ready = True  # serving: its application waits for events
    conns = []
    for i in range(count):
        server_end, client_end = socket.socketpair()
        server_end.setblocking(False)
        conn = Connection(server_end, f"u-{i}", "default", "", make_framer(b"\r\n", 1 << 20))
        CLIENTS.append(client_end)  # kept open for the test's length
        loop.conns[conn.fd] = conn
        loop.epoll.register(conn.fd, select.EPOLLIN)
        conn.watched(select.EPOLLIN)
        conns.append(conn)
    return loop, Channel(master_end, peer="worker"), conns


def master_thread(master: Channel, answer, got: list) -> threading.Thread:
    """Play the master: take every message; ``answer(parcel)`` says whether to accept a parcel."""

    def run() -> None:
        poller = select.poll()
        poller.register(master.fileno(), select.POLLIN)
        while poller.poll(1500):
            message = master.receive()
            if message is None:
                continue
            if message.kind is not Kind.PARCEL:
                got.append(message.kind)
                continue
            ok = answer(message)
            if ok:
                got.append(handoff.unpack(message.fields, message.fds))
            os.close(message.fds[0])
            if not ok and len(message.fds) > 1:
                os.close(message.fds[1])
            master.send(Kind.PARCEL_ACK, uuid=message["uuid"], ok=ok)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_queued_events_travel_with_their_connections_and_the_kept_ones_stay_in_order():
    loop, master, (kept, c1, c2) = worker_with(3)
    loop.events.extend(
        [
            (kept, DATA, b"a\r\n"),
            (c1, CONNECTED, b""),
            (c1, DATA, b"x1\r\n"),
            (c2, DATA, b"y1\r\n"),
            (kept, DATA, b"b\r\n"),
            (c1, DATA, b"x2\r\n"),
        ]
    )
    c2.session = {"step": 3, "lines": [b"one"]}
    got: list = []
    thread = master_thread(master, lambda parcel: True, got)
    assert loop.move_others(kept) == 2
    thread.join(5)
    assert loop.slot.ints[loop.slot.base + STATE] == State.SLOW  # the scoreboard says so, until the loop runs
    loop._attend()
    assert loop.slot.ints[loop.slot.base + STATE] == State.SERVING
    assert got[0] is Kind.SLOW  # before any parcel: nothing is sent back here
    parcels = {p.uuid: p for p in got[1:]}
    assert parcels["u-1"].connected is False and parcels["u-1"].pending_input == b"x1\r\nx2\r\n"
    assert parcels["u-2"].connected is True and parcels["u-2"].pending_input == b"y1\r\n"
    assert handoff.unpickle_session(parcels["u-2"].session) == {"step": 3, "lines": [b"one"]}
    assert list(loop.events) == [(kept, DATA, b"a\r\n"), (kept, DATA, b"b\r\n")]
    assert list(loop.conns.values()) == [kept]


def test_a_connection_no_worker_takes_stays_with_its_events_back_in_order():
    loop, master, (kept, c1, c2) = worker_with(3)
    loop.events.extend([(c1, CONNECTED, b""), (kept, DATA, b"a\r\n"), (c1, DATA, b"x1\r\n"), (c2, DATA, b"y1\r\n")])
    got: list = []
    thread = master_thread(master, lambda parcel: parcel["uuid"] != "u-1", got)  # u-1 is refused every time
    assert loop.move_others(kept) == 1
    thread.join(5)
    assert set(loop.conns.values()) == {kept, c1}
    assert c1.connected and not c1.unread  # as before the attempt
    assert [(conn.uuid, event, body) for conn, event, body in loop.events] == [
        ("u-0", DATA, b"a\r\n"),
        ("u-1", CONNECTED, b""),
        ("u-1", DATA, b"x1\r\n"),
    ]
    assert c1.mask == select.EPOLLIN  # watched again


def test_the_masters_commands_during_a_move_wait_for_the_loop():
    loop, master, (kept, c1) = worker_with(2)
    got: list = []

    def answer(parcel):
        master.send(Kind.STOP)  # arrives while the worker waits for this parcel's answer
        return True

    thread = master_thread(master, answer, got)
    assert loop.move_others(kept) == 1
    thread.join(5)
    assert not loop.stopping  # the application is inside an event of `kept`: no CLOSE for it now
    assert [m.kind for m in loop.deferred] == [Kind.STOP]
    loop._attend()  # the loop runs again
    assert loop.stopping and not loop.deferred


def test_a_connection_whose_session_cannot_be_pickled_stays_when_neighbours_move(caplog):
    """A move is optional: such a connection stays, with its events, instead of being
    closed (a recycle closes it: tests/test_slow_events.py)."""
    loop, master, (kept, c1, c2) = worker_with(3)
    loop.events.extend([(c1, CONNECTED, b""), (c1, DATA, b"x\r\n")])
    c1.session = {"fine": 1, "handler": lambda: None}
    got: list = []
    thread = master_thread(master, lambda parcel: True, got)
    assert loop.move_others(kept) == 1
    thread.join(5)
    assert [p.uuid for p in got[1:]] == ["u-2"]
    assert set(loop.conns.values()) == {kept, c1} and c1.open
    assert [(conn.uuid, event) for conn, event, _ in loop.events] == [("u-1", CONNECTED), ("u-1", DATA)]
    assert "key 'handler'" in caplog.text


def test_the_master_gone_during_a_move_stops_the_worker_only_when_its_loop_runs():
    loop, master, (kept, c1) = worker_with(2)
    master.sock.close()  # the master dies: the move finds out
    assert loop.move_others(kept) == 0
    assert loop.orphaned and not loop.stopping and kept.open  # the event of `kept` still runs
    loop._attend()
    assert loop.stopping


@pytest.mark.parametrize("other", [State.BOOTING, State.RETIRING, State.SLOW])
def test_nothing_moves_while_no_other_worker_serves_without_a_slow_event_of_its_own(other):
    loop, master, (kept, c1) = worker_with(2, other)
    assert loop.move_others(kept) == 0
    assert set(loop.conns.values()) == {kept, c1}
    master.sock.setblocking(False)
    assert master.receive() is None  # the master was told nothing
