"""Handing a connection over: parcels packed and unpacked with their socket and payload,
and the master's relay that keeps them, in order, until a worker has adopted them."""

from __future__ import annotations

import os
import socket

import pytest

from prefork_tcp import handoff
from prefork_tcp.channel import Channel, Kind


def pair() -> tuple[Channel, Channel]:
    """(the master's end, the worker's end)."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(master_end, peer="worker"), Channel(worker_end, peer="master")


def parcel_fds(uuid: str, payload: bytes = b"") -> tuple[dict, tuple[int, ...], socket.socket]:
    """A parcel's fields and descriptors (the master's copies), and the client's end."""
    server_end, client_end = socket.socketpair()
    fields, fds = handoff.pack(handoff.Parcel(uuid, "srv", "r", pending_input=payload), os.dup(server_end.fileno()))
    server_end.close()
    return fields, tuple(fds), client_end


@pytest.mark.parametrize("pending, output", [(b"", b""), (b"in", b""), (b"", b"out"), (b"in", b"out")])
def test_a_session_travels_in_the_payload_whatever_else_does(pending, output):
    master, worker = pair()
    client, server = socket.socketpair()
    session = handoff.pickle_session({"step": "rcpt", "to": [b"bob"]})
    parcel = handoff.Parcel("u-1", "srv", "r", pending_input=pending, unsent_output=output, session=session)
    fields, fds = handoff.pack(parcel, server.fileno())
    assert worker.send_with_fds(Kind.PARCEL, fields, fds)
    os.close(fds[1])
    message = master.receive()
    assert message is not None and len(message.fds) == 2
    got = handoff.unpack(message.fields, message.fds)
    assert got == parcel and handoff.unpickle_session(got.session) == {"step": "rcpt", "to": [b"bob"]}
    for sock in (socket.socket(fileno=message.fds[0]), client, server):
        sock.close()


def test_a_session_that_cannot_be_pickled_names_its_key():
    with pytest.raises(handoff.SessionError, match="key 'conn'") as info:
        handoff.pickle_session({"fine": 1, "conn": socket.socket()})
    assert info.value.key == "conn"


def test_a_parcels_session_must_be_a_dict():
    with pytest.raises(ValueError, match="a session is a dict"):
        handoff.unpickle_session(handoff.pickle.dumps([1]))


def test_a_parcel_travels_with_its_socket_and_payload():
    master, worker = pair()
    client, server = socket.socketpair()
    parcel = handoff.Parcel("u-1", "srv", "127.0.0.1:5", eof=True, pending_input=b"hel", unsent_output=b"out", connected=False)
    fields, fds = handoff.pack(parcel, server.fileno())
    assert worker.send_with_fds(Kind.PARCEL, fields, fds)
    os.close(fds[1])
    message = master.receive()
    assert message is not None and message.kind is Kind.PARCEL and len(message.fds) == 2
    assert handoff.unpack(message.fields, message.fds) == parcel
    moved = socket.socket(fileno=message.fds[0])
    moved.sendall(b"through the moved socket")
    assert client.recv(100) == b"through the moved socket"
    for sock in (moved, client, server):
        sock.close()


def test_relay_keeps_a_parcel_until_a_worker_adopts_it():
    master_a, worker_a = pair()
    master_b, worker_b = pair()
    relay = handoff.Relay()
    client, server = socket.socketpair()
    fields, fds = handoff.pack(handoff.Parcel("u-1", "srv", "r"), os.dup(server.fileno()))
    relay.add(fields, tuple(fds))
    assert relay.deliver([(1, master_a, 0), (2, master_b, 5)]) == 1  # to the least loaded
    first = worker_a.receive()
    assert first is not None and first.kind is Kind.PARCEL
    os.close(first.fds[0])
    assert relay.acknowledged(1, "u-1", ok=False)  # worker 1 could not take it
    assert relay.holds("u-1") and len(relay.waiting) == 1
    assert relay.deliver([(1, master_a, 0), (2, master_b, 5)]) == 1  # the one that refused goes last
    second = worker_b.receive()
    assert second is not None and second["uuid"] == "u-1"
    relay.gone(2)  # worker 2 died before answering: back in line
    assert len(relay.waiting) == 1
    assert relay.deliver([(1, master_a, 0)]) == 1
    third = worker_a.receive()
    assert not relay.acknowledged(2, "u-1", ok=True)  # not sent to 2 (any more)
    assert relay.acknowledged(1, "u-1", ok=True)
    assert len(relay) == 0
    adopted = socket.socket(fileno=third.fds[0])
    adopted.sendall(b"x")
    assert client.recv(1) == b"x"
    os.close(second.fds[0])
    for sock in (adopted, client, server):
        sock.close()


def test_relay_keeps_the_order_of_parcels_and_waits_behind_one_that_cannot_go():
    master_a, worker_a = pair()
    relay = handoff.Relay()
    clients = []
    for n in range(3):
        fields, fds, client = parcel_fds(f"u-{n}", payload=b"x" if n == 1 else b"")
        relay.add(fields, fds)
        clients.append(client)
    assert relay.deliver([]) == 0 and len(relay.waiting) == 3  # no worker can take them yet
    assert relay.deliver([(1, master_a, 0)]) == 3
    uuids = []
    while (message := worker_a.receive()) is not None:
        uuids.append(message["uuid"])
        for fd in message.fds:
            os.close(fd)
    assert uuids == ["u-0", "u-1", "u-2"]
    assert relay.acknowledged(1, "u-1", ok=False)  # refused: back in line, in its place
    assert relay.acknowledged(1, "u-0", ok=True) and relay.acknowledged(1, "u-2", ok=True)
    assert [entry.fields["uuid"] for entry in relay.waiting] == ["u-1"]
    relay.close()
    assert len(relay) == 0
    for client in clients:
        client.close()


def test_a_parcel_without_payload_carries_only_its_socket():
    fields, fds = handoff.pack(handoff.Parcel("u-1", "srv", "r"), 99)
    assert fds == [99] and fields["input"] == fields["output"] == 0
    assert handoff.unpack(fields, (99,)) == handoff.Parcel("u-1", "srv", "r")
