"""Per-connection state and the TcpWorker answer rules, without sockets."""

from __future__ import annotations

import select

import pytest

from prefork_tcp import Request, TcpEvent, TcpResponse, TcpWorker
from prefork_tcp.connection import Connection
from prefork_tcp.framing import Framer
from prefork_tcp.gate import Gate


def make_conn(high_water: int = 100) -> Connection:
    return Connection(None, "u-1", "srv", "127.0.0.1:5", Framer(b"\r\n", 1000), high_water=high_water)


def test_output_is_joined_and_unsent_rest_put_back_first():
    conn = make_conn()
    assert conn.write(b"ab") is True  # the first queued: the loop must flush it
    assert conn.write(b"cd") is False
    assert conn.write(b"") is False
    assert conn.out_size == 4
    data = conn.take_output()
    assert data == b"abcd" and conn.out_size == 0
    conn.write(b"ef")
    conn.unsent(data[1:])
    assert conn.take_output() == b"bcdef"


def test_reading_stops_above_high_water_and_events_are_held_in_order():
    conn = make_conn(high_water=10)
    assert conn.wants_read
    assert conn.hold("e1") is False
    conn.write(b"x" * 10)
    assert not conn.wants_read and conn.out_size == 10
    assert conn.hold("e2") is True
    assert conn.hold("e3") is True
    assert conn.release() is None  # still above the mark
    conn.take_output()
    conn.unsent(b"x" * 9)
    assert conn.release() == ["e2", "e3"]
    assert conn.hold("e4") is False


def test_plain_follows_mask_held_and_closing():
    conn = make_conn(high_water=10)
    assert not conn.plain  # not registered yet
    conn.mask = select.EPOLLIN
    conn.settle()
    assert conn.plain
    conn.write(b"x" * 10)
    assert conn.hold("e1") and not conn.plain  # holding events back
    conn.take_output()
    assert conn.release() == ["e1"] and conn.plain
    conn.closing = True
    conn.settle()
    assert not conn.plain
    conn.closing = False
    conn.mask = select.EPOLLIN | select.EPOLLOUT
    conn.settle()
    assert not conn.plain
    conn.mask = select.EPOLLIN
    conn.write(b"x" * 10)
    conn.hold((conn, TcpEvent.DATA, b"m\r\n"))
    assert conn.parcel().pending_input == b"m\r\n"
    assert conn.held and not conn.plain  # a parcel takes nothing until it has arrived


def test_finish_is_true_once_and_stops_reading():
    conn = make_conn()
    assert conn.finish() is True
    assert conn.finish() is False
    assert not conn.wants_read


class RecordingLoop:
    """Stands in for the event loop: hands out scripted events, records answers."""

    def __init__(self, events):
        self.events = list(events)
        self.answers: list[tuple[str, TcpResponse, bytes]] = []
        self.abandoned: list[str] = []
        self.dirty: list[Connection] = []
        self.gate = Gate()

    def pump(self):
        yield from self.events

    def answer(self, conn, response, body):
        self.answers.append((conn.uuid, response, body))

    def abandon(self, conn):
        self.abandoned.append(conn.uuid)


def worker_with(*events):
    conn = make_conn(high_water=1 << 20)
    loop = RecordingLoop([(conn, ev, body) for ev, body in events])
    return TcpWorker(loop), loop, conn


def test_request_fields_and_respond_writes_to_the_connection():
    worker, loop, conn = worker_with((TcpEvent.DATA, b"hi\r\n"))
    request = worker.wait_request()
    assert request == Request(TcpEvent.DATA, b"hi\r\n", "srv", "u-1", "127.0.0.1:5")
    assert request == tuple(request) and hash(request) == hash(tuple(request))  # a tuple, however made
    with pytest.raises(AttributeError):
        request.body = b"x"  # type: ignore[misc]
    worker.respond(b"ok")
    assert conn.out == [b"ok"] and loop.dirty == [conn]
    assert worker.wait_request() is None


def test_unanswered_request_is_closed_by_the_next_wait():
    worker, loop, _ = worker_with((TcpEvent.CONNECTED, b""), (TcpEvent.CLOSE, b""))
    worker.wait_request()
    worker.wait_request()
    assert loop.answers == [("u-1", TcpResponse.CLOSE, b"")]


def test_answering_twice_raises_and_close_answers_are_ignored():
    worker, loop, _ = worker_with((TcpEvent.DATA, b"a"), (TcpEvent.CLOSE, b""))
    worker.wait_request()
    worker.read()
    with pytest.raises(RuntimeError, match="request DATA of connection u-1 was already answered"):
        worker.respond(b"again")
    worker.wait_request()
    worker.respond(b"ignored")
    worker.close()
    assert loop.answers == []  # READ asks nothing of the loop; answers to CLOSE are dropped


def test_read_answers_the_request_without_the_loop_both_ways():
    worker, loop, conn = worker_with((TcpEvent.CONNECTED, b""), (TcpEvent.DATA, b"a"), (TcpEvent.DATA, b"b"))
    worker.wait_request()
    worker.read()
    worker.wait_request()  # answered: not closed by this wait
    worker.respond(b"x", TcpResponse.READ)  # the same answer, spelled out: writes nothing
    with pytest.raises(RuntimeError, match="already answered"):
        worker.read()
    worker.wait_request()
    assert loop.answers == [] and conn.out == [] and loop.dirty == []


@pytest.mark.parametrize("body", [123, None, bytearray(b"x"), memoryview(b"x")])
def test_respond_rejects_other_types(body):
    worker, _, _ = worker_with((TcpEvent.DATA, b"a"))
    worker.wait_request()
    with pytest.raises(TypeError, match="body must be bytes or str"):
        worker.respond(body)
    worker.respond("é")  # still unanswered after the TypeError; a str is UTF-8 encoded


def test_respond_rejects_a_bad_response_and_needs_a_request():
    worker, _, _ = worker_with((TcpEvent.DATA, b"a"))
    with pytest.raises(RuntimeError, match="no request"):
        worker.respond(b"x")
    worker.wait_request()
    with pytest.raises(TypeError, match="TcpResponse"):
        worker.respond(b"x", "WRITE")  # type: ignore[arg-type]


def test_error_abandons_the_connection():
    worker, loop, _ = worker_with((TcpEvent.DATA, b"a"))
    worker.wait_request()
    worker.error("broken")
    assert loop.abandoned == ["u-1"]
    with pytest.raises(RuntimeError):
        worker.respond(b"late")


def test_wire_values_match_roadrunner():
    assert [e.value for e in TcpEvent] == ["CONNECTED", "DATA", "CLOSE"]
    assert {r.name: r.value for r in TcpResponse} == {
        "RESPOND": "WRITE",
        "RESPOND_CLOSE": "WRITECLOSE",
        "READ": "CONTINUE",
        "CLOSE": "CLOSE",
    }


def test_parcel_carries_held_input_partial_and_unsent_output():
    conn = make_conn(high_water=4)
    assert conn.framer.feed(b"one\r\ntw") == [b"one\r\n"]
    conn.write(b"answer")
    assert conn.hold((conn, TcpEvent.DATA, b"one\r\n"))
    assert conn.hold((conn, None, b""))  # an end-of-input marker is not data
    conn.eof = True
    parcel = conn.parcel()
    assert (parcel.uuid, parcel.server, parcel.remote, parcel.eof) == ("u-1", "srv", "127.0.0.1:5", True)
    assert parcel.pending_input == b"one\r\ntw" and parcel.unsent_output == b"answer"
    assert parcel.connected
    # Nothing is taken: if the parcel cannot be delivered, the connection carries on as it was.
    assert conn.held and conn.out_size == 6 and conn.framer.pending == 2
    conn.unread.append(b"three\r\n")  # taken back from the event queue (the application failed)
    conn.connected = False
    parcel = conn.parcel()
    assert parcel.pending_input == b"one\r\nthree\r\ntw" and not parcel.connected


def test_new_uuid_is_uuid4_text_unique_and_fresh_after_fork():
    import os
    import uuid as uuid_module

    from prefork_tcp.uuids import new_uuid

    seen = {new_uuid() for _ in range(20_000)}
    assert len(seen) == 20_000
    for text in list(seen)[:1000]:
        parsed = uuid_module.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid_module.RFC_4122
    new_uuid()  # the parent has a partly used block now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, new_uuid().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    assert child != new_uuid() and child not in seen
