"""The worker's event loop in-process, over a real socketpair: cases no client can time."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp import handoff
from prefork_tcp.api import TcpWorker
from prefork_tcp.channel import Channel, Kind
from prefork_tcp.connection import Connection
from prefork_tcp.events import Request, TcpEvent
from prefork_tcp.framing import make_framer
from prefork_tcp.scoreboard import Closed
from prefork_tcp.signals import SignalPipe
from prefork_tcp.worker import Worker


def test_an_answer_to_a_connection_dropped_meanwhile_is_discarded():
    # While the application handles a request, the loop may drop that connection (a quick
    # stop read while close_connection() waits for the master); its answer must go nowhere.
    channel, master_end = socket.socketpair()
    server_end, client_end = socket.socketpair()
    loop = Worker([], channel, SignalPipe(()), drain_timeout=1.0, high_water=1 << 20)
    server_end.setblocking(False)
    conn = Connection(server_end, "u-1", "default", "", make_framer(b"\r\n", 1 << 20))
    loop.conns[conn.fd] = conn
    loop.epoll.register(conn.fd, select.EPOLLIN)
    conn.mask = select.EPOLLIN
    conn.settle()
    worker = TcpWorker(loop)
    client_end.sendall(b"PING\r\n")
    assert worker.wait_request().body == b"PING\r\n"
    loop._drop(conn, Closed.CLIENT)
    worker.respond(b"+PONG\r\n")
    master_end.send(b"Q")  # then stop: the loop flushes the answer's connection first
    assert worker.wait_request().event.value == "CLOSE"
    assert worker.wait_request() is None
    client_end.settimeout(5)
    assert client_end.recv(100) == b""  # closed, nothing written


def loop_with(count: int, high_water: int = 1 << 20) -> tuple[Worker, Channel, list[socket.socket]]:
    """A worker loop holding ``count`` connections, with the master's end of its channel."""
    channel, master_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = Worker([], channel, SignalPipe(()), drain_timeout=1.0, high_water=high_water)
    clients = []
    for i in range(count):
        server_end, client_end = socket.socketpair()
        server_end.setblocking(False)
        conn = Connection(server_end, f"u-{i}", "default", "", make_framer(b"\r\n", 1 << 20), high_water=high_water)
        loop.conns[conn.fd] = conn
        loop.epoll.register(conn.fd, select.EPOLLIN)
        conn.mask = select.EPOLLIN
        conn.settle()
        clients.append(client_end)
    return loop, Channel(master_end, peer="worker"), clients


def as_master(master: Channel, script) -> threading.Thread:
    """Run ``script(receive)`` in a thread, as the master would answer; ``receive()`` waits
    for the worker's next message."""

    def receive():
        poller = select.poll()
        poller.register(master.fileno(), select.POLLIN)
        assert poller.poll(5000), "the worker sent nothing"
        return master.receive()

    thread = threading.Thread(target=script, args=(receive,), daemon=True)
    thread.start()
    return thread


def closes(loop: Worker) -> list[str]:
    return [conn.uuid for conn, event, _ in loop.events if event is TcpEvent.CLOSE]


def test_a_stop_during_a_handoff_leaves_connections_in_transit_alone():
    """STOP overtakes the acknowledgements: connections the master holds get no CLOSE here
    (the worker that adopts them delivers it); one it refused is finished here, once."""
    loop, master, _clients = loop_with(3)

    def master_script(receive):
        parcels = [receive() for _ in range(3)]
        for parcel in parcels:
            for fd in parcel.fds:
                os.close(fd)
        master.send(Kind.STOP, urgent=True)
        master.send(Kind.PARCEL_ACK, uuid=parcels[0]["uuid"], ok=True)
        master.send(Kind.PARCEL_ACK, uuid=parcels[1]["uuid"], ok=False)
        # parcels[2]: no answer before the deadline (the master has it, or is gone)

    thread = as_master(master, master_script)
    loop.begin_retire()
    loop._hand_off_all()
    thread.join(5)
    assert loop.stopping
    assert closes(loop) == ["u-1"]  # the refused one only, exactly once
    assert not loop.conns  # the others are the master's (and the next worker's) now


def test_close_connection_acts_on_every_message_that_came_with_its_answer():
    loop, master, _clients = loop_with(0)
    # The answer and a command wait together, as when the master answered at once and
    # then decided to retire this worker: both are read in one batch.
    master.send(Kind.CLOSE_RESULT, id=Worker._close_ids + 1, found=False)
    master.send(Kind.RETIRE)
    assert loop.close_connection("nobody") is False
    assert master.receive().kind is Kind.CLOSE_REQUEST
    assert loop.retiring  # not dropped


def test_salvage_hands_over_a_slow_readers_held_messages():
    """The application failed while a slow reader's messages were held back: flushing its
    output releases them, and they must travel in its parcel."""
    loop, master, clients = loop_with(1, high_water=8)
    (conn,) = loop.conns.values()
    conn.write(b"x" * 20)  # above the high-water mark, not sent yet
    loop.dirty.append(conn)
    assert conn.hold((conn, TcpEvent.DATA, b"m1\r\n"))
    got = {}

    def master_script(receive):
        assert receive().kind is Kind.APP_FAILED
        parcel = receive()
        got["parcel"] = handoff.unpack(parcel.fields, parcel.fds)
        os.close(parcel.fds[0])
        master.send(Kind.PARCEL_ACK, uuid=parcel["uuid"], ok=True)

    thread = as_master(master, master_script)
    loop.salvage(None)
    thread.join(5)
    assert got["parcel"].pending_input == b"m1\r\n"
    clients[0].settimeout(5)
    assert clients[0].recv(100) == b"x" * 20  # the answer given before the failure was written
    assert loop.stopped


def test_more_ready_connections_than_one_wait_takes_are_all_served():
    """The compiled core's wait takes 256 events at most; the rest come with the next one."""
    count = 300
    loop, master, clients = loop_with(count)
    for i, client in enumerate(clients):
        client.sendall(b"PING %d\r\n" % i)
    worker = TcpWorker(loop)
    seen = set()
    for _ in range(count):
        request = worker.wait_request()
        assert request is not None and request.event is TcpEvent.DATA
        seen.add(request.body)
        worker.respond(request.body.replace(b"PING", b"PONG"))
    assert seen == {b"PING %d\r\n" % i for i in range(count)}
    master.send(Kind.STOP, urgent=True)  # the loop flushes every answer, then stops
    while worker.wait_request() is not None:
        pass
    for i, client in enumerate(clients):
        client.settimeout(5)
        assert client.recv(100) == b"PONG %d\r\n" % i
        client.close()


def test_requests_the_application_keeps_stay_as_they_were_delivered():
    """The compiled core keeps dropped requests to make the next ones (crequest.pxd): one
    the application still holds must never be among them, however the reads come."""
    loop, master, clients = loop_with(2)
    worker = TcpWorker(loop)
    kept, expected = [], []
    for batch in range(40):
        for i, client in enumerate(clients):
            client.sendall(b"".join(b"M %d %d %d\r\n" % (batch, i, n) for n in range(batch % 5 + 1)))
        for _ in range(2 * (batch % 5 + 1)):
            request = worker.wait_request()
            assert request is not None and request.event is TcpEvent.DATA
            if len(expected) % 3 == 0:  # keep every third; the rest are dropped at once
                kept.append(request)
            expected.append(tuple(request))
            worker.read()
    assert [tuple(r) for r in kept] == expected[::3]
    assert {r.body for r in kept} == {e[1] for e in expected[::3]}  # read through the fields too
    master.send(Kind.STOP, urgent=True)
    while worker.wait_request() is not None:
        pass


def test_requests_made_and_dropped_by_the_loop_give_their_type_back():
    """Every Request the loop makes holds its type; the compiled core fills kept ones
    again (crequest.pxd): over many events, the type's references must not grow."""
    loop, master, clients = loop_with(1)
    worker = TcpWorker(loop)

    def serve(count: int) -> None:
        clients[0].sendall(b"PING\r\n" * count)
        for _ in range(count):
            request = worker.wait_request()
            assert request is not None and request.body == b"PING\r\n"
            worker.read()

    serve(100)  # whatever is kept, is kept by now
    before = sys.getrefcount(Request)
    serve(5_000)
    assert sys.getrefcount(Request) == before
    master.send(Kind.STOP, urgent=True)
    while worker.wait_request() is not None:
        pass


def test_a_worker_whose_master_is_gone_stops_watching_the_channel():
    """EOF on the channel stays readable: a loop still watching it would spin until it stops."""
    loop, master, clients = loop_with(1)
    master.close()
    loop._read_channel()
    assert loop.orphaned and loop.stopping
    assert loop.epoll.poll(0.2) == []  # nothing ready: no busy loop while the connections drain


def test_a_parcel_from_a_worker_is_checked_before_the_master_keeps_it():
    server_end, client_end = socket.socketpair()
    read_end, write_end = os.pipe()
    fields = {"input": 10, "output": 0, "session": 0}
    assert handoff.check(fields, (read_end,)) == "its descriptor is not a socket"
    payload = os.memfd_create("short")
    os.write(payload, b"12345")
    assert handoff.check(fields, (server_end.fileno(), payload)) == "its payload is shorter than it says"
    os.write(payload, b"67890")
    assert handoff.check(fields, (server_end.fileno(), payload)) == ""
    for fd in (read_end, write_end, payload):
        os.close(fd)
    server_end.close()
    client_end.close()


def run_script(chunks: list[bytes], fast: bool) -> tuple[list[tuple[str, bytes]], bytes, int]:
    """The events an echo application sees for a connection that sends ``chunks`` then EOF,
    and what it is sent back; through the loop's inlined fast path or its slow twin.

    The connection is a ``SOCK_SEQPACKET`` socketpair: every read returns one chunk whole."""
    channel, master_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = Worker([], channel, SignalPipe(()), drain_timeout=1.0, high_water=1 << 20)
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server_end.setblocking(False)
    for chunk in chunks:
        client_end.send(chunk)
    client_end.shutdown(socket.SHUT_WR)
    conn = Connection(server_end, "u-1", "default", "", make_framer(b"\r\n", 1 << 20))
    loop.conns[conn.fd] = conn
    loop.epoll.register(conn.fd, select.EPOLLIN)
    conn.mask = select.EPOLLIN
    if fast:
        conn.settle()  # plain: the pump's inlined read, framing shortcut and flush
    serviced = []
    slow_service = loop._service
    loop._service = lambda c, mask: (serviced.append(mask), slow_service(c, mask))  # type: ignore[method-assign]  # counting calls
    worker = TcpWorker(loop)
    seen: list[tuple[str, bytes]] = []
    while (request := worker.wait_request()) is not None:
        seen.append((request.event.value, request.body))
        if request.event is TcpEvent.DATA:
            worker.respond(request.body.upper())
        elif request.event is TcpEvent.CONNECTED:
            worker.read()
        elif request.event is TcpEvent.CLOSE:
            master_end.send(b"Q")  # the script is done: the loop stops
    client_end.settimeout(5)
    sent = b"".join(iter(lambda: client_end.recv(1 << 16), b""))
    for sock in (channel, master_end, server_end, client_end):
        sock.close()
    return seen, sent, len(serviced)


SCRIPTS = [
    [b"ping\r\n"],
    [b"ping\r\n", b"pong\r\n"],
    [b"a\r\nb\r\n", b"c\r\n"],
    [b"ab", b"c\r\n"],
    [b"x\r", b"\ny\r\n"],
    [b"one\r\ntw", b"o\r\n", b"three"],
    [b"\r\n", b"\r\n\r\n"],
    [b"tail without a delimiter"],
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n"]), min_size=1, max_size=6).map(b"".join), min_size=1, max_size=5)
)
def test_the_fast_path_and_its_slow_twin_agree_on_any_chunks(chunks):
    """The whole-message shortcut (a C search in the compiled core) against ``feed``."""
    fast = run_script(chunks, fast=True)
    assert fast[:2] == run_script(chunks, fast=False)[:2], chunks
    assert fast[0][-1] == ("CLOSE", b"") and fast[1] == b"".join(chunks).upper()


def test_the_inlined_fast_path_and_its_slow_twin_agree():
    """``pump`` inlines the read, the whole-message shortcut and the flush; ``_service``,
    ``_recv``, ``_received`` and ``_send`` are their slow twins. Same bytes, same events,
    same output."""
    for chunks in SCRIPTS:
        fast = run_script(chunks, fast=True)
        slow = run_script(chunks, fast=False)
        assert fast[:2] == slow[:2], chunks
        assert fast[2] == 0 and slow[2] > 0  # each run took the path it was meant to
        assert fast[0][-1] == ("CLOSE", b"")
        body = b"".join(chunks)
        assert b"".join(b for kind, b in fast[0] if kind == "DATA") == body
        assert fast[1] == body.upper()


def test_a_half_closed_connection_still_gets_its_whole_answer():
    """The client's FIN is read while most of its answer waits to be sent: the loop stops
    reading the connection (its EOF stays readable), sends the whole answer, then closes."""
    channel, master_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = Worker([], channel, SignalPipe(()), drain_timeout=1.0, high_water=1 << 20)
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server_end.setblocking(False)
    client_end.sendall(b"answer me\r\n")
    client_end.shutdown(socket.SHUT_WR)
    conn = Connection(server_end, "u-1", "default", "", make_framer(b"\r\n", 1 << 20))
    loop.conns[conn.fd] = conn
    loop.epoll.register(conn.fd, select.EPOLLIN)
    conn.mask = select.EPOLLIN
    conn.settle()
    answer = bytes(range(256)) * 2400  # 600 KiB: more than the socket takes at once, less than the high-water mark
    closed = threading.Event()
    received: list[bytes] = []

    def client() -> None:
        closed.wait(30)  # the CLOSE is out: the loop has taken the EOF
        client_end.settimeout(30)
        received.append(b"".join(iter(lambda: client_end.recv(1 << 16), b"")))
        master_end.send(b"Q")  # done: the loop stops

    reader = threading.Thread(target=client)
    reader.start()
    worker = TcpWorker(loop)
    events = []
    while (request := worker.wait_request()) is not None:
        events.append(request.event)
        if request.event is TcpEvent.DATA:
            worker.respond(answer)
        elif request.event is TcpEvent.CLOSE:
            closed.set()
    reader.join(30)
    for sock in (channel, master_end, server_end, client_end):
        sock.close()
    assert events == [TcpEvent.DATA, TcpEvent.CLOSE]
    assert received == [answer]


def test_at_eof_only_a_connection_that_was_only_read_stays_registered_for_reading():
    """Its queued _EOF closes it before the next wait. One that is sending stops being
    read at once: should that _EOF be dropped (a salvage, a handoff), its EOF, readable
    for good, must not end it before its output is out."""
    loop, master, clients = loop_with(2)
    reading, sending = sorted(loop.conns.values(), key=lambda c: c.uuid)
    sending.write(b"pending answer\r\n")
    loop._update_mask(sending)  # output waits for EPOLLOUT
    assert not sending.plain and sending.mask == select.EPOLLIN | select.EPOLLOUT
    for conn in (reading, sending):
        loop._end_of_input(conn)
    assert reading.mask == select.EPOLLIN  # closed when its _EOF is taken, no EPOLL_CTL_DEL
    assert sending.mask == select.EPOLLOUT
    assert [(item[0].uuid, item[1]) for item in loop.events] == [("u-0", None), ("u-1", None)]
    for sock in clients:
        sock.close()
    master.close()
