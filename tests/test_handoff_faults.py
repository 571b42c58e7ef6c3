"""Handing connections over when descriptors run out: nothing lost, nothing cut in two."""

from __future__ import annotations

import re
import signal

import psutil
from harness import Client, servers_config, wait_for


def worker_pid(server, worker_id: int) -> int:
    line = server.wait_log(rf"worker {worker_id} \(pid \d+\) ready")[0]
    return int(re.search(r"\(pid (\d+)\)", line).group(1))  # type: ignore[union-attr]


def unread_by_server(client: Client) -> int:
    """Bytes the client sent that wait in the server's receive queue (/proc/net/tcp)."""
    def hexaddr(addr: tuple[str, int]) -> str:
        packed = bytes(map(int, addr[0].split(".")))[::-1].hex().upper()
        return f"{packed}:{addr[1]:04X}"
    server_side = (hexaddr(client.sock.getpeername()), hexaddr(client.sock.getsockname()))
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == server_side:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError("the server's end of the connection is not in /proc/net/tcp")


def test_a_parcel_the_adopting_worker_has_no_descriptor_for_waits_and_arrives_whole(start_server):
    server = start_server(servers_config("echo"), workers=2)
    first, second = worker_pid(server, 1), worker_pid(server, 2)
    # A client on worker 1, the one SIGTTOU retires.
    others: list[Client] = []
    while True:
        client = Client(server.address("echo"))
        client.send(b"pid\r\n")
        if int(client.line()) == first:
            break
        others.append(client)
    client.send(b"uuid\r\n")
    uuid = client.line().decode().strip()
    client.send(b"hel")  # half a message, read by worker 1: it travels in the parcel's payload
    wait_for(lambda: unread_by_server(client) == 0, what="worker 1 to read the half message")
    # Worker 2 can open no descriptor at all: a parcel reaches it without its socket and payload.
    adopter = psutil.Process(second)
    soft, hard = adopter.rlimit(psutil.RLIMIT_NOFILE)
    adopter.rlimit(psutil.RLIMIT_NOFILE, (3, hard))
    try:
        server.send_signal(signal.SIGTTOU)
        server.wait_log(rf"worker 1 \(pid {first}\) retired")
        server.wait_log(rf"\[{second}\] \[WARNING\] cannot adopt connection {uuid}")
    finally:
        adopter.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    client.send(b"lo\r\n")
    assert client.line() == b"hello\r\n"  # one message, as the client sent it
    client.send(b"pid\r\n")
    assert int(client.line()) == second
    kinds = [e["event"] for e in server.events_of(uuid)]
    assert kinds.count("CONNECTED") == 1 and "CLOSE" not in kinds
    assert [e["body"] for e in server.events_of(uuid) if e["body"].startswith("hel")] == ["hello\r\n"]
    for other in [client, *others]:
        other.close()
