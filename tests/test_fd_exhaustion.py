"""Running out of file descriptors: handoffs lose and cut nothing, nothing spins or dies."""

from __future__ import annotations

import json
import re
import signal
import socket
import time

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


def cpu_share(pid: int, seconds: float = 1.0) -> float:
    """The share of one core a process used over ``seconds`` (polled, not slept in between)."""
    proc = psutil.Process(pid)
    before, start = sum(proc.cpu_times()[:2]), time.monotonic()
    wait_for(lambda: time.monotonic() - start >= seconds, what="a second to pass")
    return (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - start)


def test_a_master_out_of_descriptors_neither_spins_nor_dies_and_recovers(start_server, tmp_path):
    server = start_server(servers_config("echo", extra='[control]\nsocket = "ctl.sock"\n'), workers=1)
    path = str(tmp_path / "ctl.sock")
    master = psutil.Process(server.proc.pid)
    soft, hard = master.rlimit(psutil.RLIMIT_NOFILE)
    master.rlimit(psutil.RLIMIT_NOFILE, (3, hard))
    waiting = []
    try:
        for _ in range(5):  # the kernel queues them; the master cannot accept them
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(b'{"command": "workers"}\n')
            waiting.append(sock)
        server.wait_log(r"cannot accept a control client: Too many open files")
        assert cpu_share(server.proc.pid) < 0.5
        assert server.log.count("cannot accept a control client") <= 3  # at most one a second
    finally:
        master.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    for sock in waiting:  # accepted and answered once descriptors are back
        sock.settimeout(10)
        assert json.loads(sock.recv(65536))["ok"]
        sock.close()
    assert server.proc.poll() is None


def test_a_worker_out_of_descriptors_pauses_accepting_warns_rarely_and_recovers(start_server):
    server = start_server(servers_config("echo"), workers=1)
    worker = psutil.Process(worker_pid(server, 1))
    soft, hard = worker.rlimit(psutil.RLIMIT_NOFILE)
    with Client(server.address("echo")) as before:
        before.send(b"one\r\n")
        assert before.line() == b"one\r\n"
        worker.rlimit(psutil.RLIMIT_NOFILE, (3, hard))
        try:
            pending = [socket.create_connection(server.address("echo"), timeout=10) for _ in range(20)]
            server.wait_log(r"cannot accept on echo: Too many open files; pausing accepts")
            assert cpu_share(worker.pid, 1.5) < 0.5
            assert server.log.count("cannot accept on echo") <= 4  # at most one a second
            before.send(b"two\r\n")  # connections it holds are served meanwhile
            assert before.line() == b"two\r\n"
        finally:
            worker.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    for sock in pending:  # all accepted once descriptors are back: served side by side
        sock.sendall(b"three\r\n")
    for sock in pending:
        assert sock.recv(100) == b"three\r\n"
    for sock in pending:
        sock.close()
