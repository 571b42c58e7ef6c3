"""The master<->worker channel: the message table, validation, queueing, lost descriptors,
and the relay's acknowledgements, over real SEQPACKET socket pairs."""

from __future__ import annotations

import os
import resource
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp import handoff
from prefork_tcp.channel import EOF, Channel, ChannelError, Kind, Truncated, close_all, decode, encode


def pair() -> tuple[Channel, Channel]:
    """(the master's end, the worker's end)."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(master_end, peer="worker"), Channel(worker_end, peer="master")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


_PARCEL_BODY = b'{"uuid":"u","server":"s","remote":"r","eof":false,"connected":true,"input":0,"output":0,"session":0}'
_VALUES = {int: st.integers(0, 1 << 61), str: st.text(max_size=50), bool: st.booleans()}


@settings(deadline=None)
@given(st.data())
def test_every_message_survives_encode_and_decode(data):
    kind = data.draw(st.sampled_from([k for k in Kind if k is not Kind.PARCEL]))
    fields = {name: data.draw(_VALUES[typ]) for name, typ in kind.fields.items()}
    sender = data.draw(st.sampled_from(kind.senders))
    message = decode(encode(kind, fields), [], 0, sender)
    assert message.kind is kind and message.fields == fields


@pytest.mark.parametrize(
    "packet, sender, why",
    [
        (b"Z", "worker", "unknown message type"),
        (b"", "worker", "unknown message type"),
        (b"T", "worker", "not sent by the worker"),  # STOP comes from the master only
        (b"R", "master", "not sent by the master"),
        (b"U", "old master", "not sent by the old master"),  # SUCCESSOR_READY comes from the new one
        (b"D", "worker", "not sent by the worker"),  # HANDED_OVER: from the old master only
        (b"A" + _PARCEL_BODY, "new master", "not sent by the new master"),  # parcels go from old to new
        (b"Rx", "worker", "takes no body"),
        (b"c{not json", "worker", "unreadable body"),
        (b"c" + b"[" * 100_000 + b"]" * 100_000, "worker", "unreadable body"),  # RecursionError
        (b"c\xff\xfe", "worker", "unreadable body"),
        (b'c{"id": 1}', "worker", "expected fields"),
        (b'c{"id": 1, "found": true, "x": 0}', "worker", "expected fields"),
        (b'c{"id": true, "found": true}', "worker", "not a valid int"),  # a bool is not an int
        (b'c{"id": -1, "found": true}', "worker", "not a valid int"),
        (b'c{"id": 1, "found": 1}', "worker", "not a valid bool"),
        (b"c[1, 2]", "worker", "expected fields"),
    ],
)
def test_garbage_is_refused_with_a_reason(packet, sender, why):
    with pytest.raises(ChannelError, match=why):
        decode(packet, [], 0, sender)


def test_descriptors_where_none_belong_are_closed_and_refused():
    read_end, write_end = os.pipe()
    os.close(write_end)
    with pytest.raises(ChannelError, match="1 descriptors attached"):
        decode(b"R", [read_end], 0, "worker")
    with pytest.raises(OSError):
        os.fstat(read_end)  # closed by decode


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_channel_error(packet):
    for sender in ("master", "worker"):
        try:
            decode(packet, [], 0, sender)
        except ChannelError:
            pass


def test_sends_queue_when_the_socket_is_full_and_nothing_is_dropped():
    master, worker = pair()
    sent = 0
    while not master.pending:
        master.send(Kind.CLOSE, id=sent, uuid="u" * 200)
        sent += 1
    for extra in range(500):
        master.send(Kind.CLOSE, id=sent + extra, uuid="u" * 200)
    total = sent + 500
    received: list[int] = []
    while len(received) < total:
        while (message := worker.receive()) is not None:
            received.append(message["id"])
        master.flush()
    assert received == list(range(total))  # all of them, in order
    assert master.flush() and not master.pending


def test_a_closed_peer_is_eof_and_a_broken_channel_stops_queueing():
    master, worker = pair()
    worker.close()
    assert master.receive() is EOF
    master.send(Kind.STOP)
    assert master.broken and not master.pending


def test_descriptors_received_are_close_on_exec():
    """A program the application runs, or a new master an upgrade starts, inherits no connection."""
    master, worker = pair()
    client, server = socket.socketpair()
    fields, fds = handoff.pack(handoff.Parcel("u-1", "srv", "r", pending_input=b"x"), server.fileno())
    assert master.send_with_fds(Kind.PARCEL, fields, fds)
    message = worker.receive()
    assert message is not None and message.kind is Kind.PARCEL and len(message.fds) == 2
    assert not any(os.get_inheritable(fd) for fd in message.fds)
    close_all(message.fds)
    close_all(fds[1:])
    for sock in (client, server):
        sock.close()


def test_a_parcel_whose_descriptors_do_not_fit_is_truncated_and_leaks_nothing():
    """The receiver at its open-files limit: the kernel delivers what fits and sets
    MSG_CTRUNC; the parcel is refused by uuid and what did arrive is closed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiving worker, with room for exactly one more descriptor
        code = 1
        try:
            os.close(read_end)
            master, worker = pair()
            client, server = socket.socketpair()
            fields, fds = handoff.pack(handoff.Parcel("u-9", "srv", "r", pending_input=b"hel"), server.fileno())
            assert master.send_with_fds(Kind.PARCEL, fields, fds)
            # The limit bounds descriptor numbers: fill every free number below the
            # highest open one, then allow exactly one number more.
            highest = max(int(name) for name in os.listdir("/proc/self/fd") if int(name) < 1000)
            while (filler := os.open(os.devnull, os.O_RDONLY)) <= highest:
                pass
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (filler + 2, hard))
            before = open_fds()
            try:
                worker.receive()
            except Truncated as exc:
                ok = exc.message["uuid"] == "u-9" and "lost in transit" in str(exc) and open_fds() == before
                code = 0 if ok else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"\0"
    os.close(read_end)
