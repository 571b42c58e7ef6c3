"""One connection's slow event does not hold up the other connections of its worker;
``TcpWorker.session`` moves with a connection.  Real server, real clients."""

from __future__ import annotations

import socket

import pytest
from harness import Client, answering_pid, kinds, manage, servers_config, start, uuid_of, wait_for


def neighbours(server, count: int = 8) -> tuple[Client, list[Client], int, list[Client]]:
    """Connect ``count`` clients; return the first, those its worker also serves, its
    worker's pid, and every client."""
    clients = [Client(server.address("echo")) for _ in range(count)]
    pids = [answering_pid(client) for client in clients]
    while pids.count(pids[0]) < 2 and len(clients) < 4 * count:  # the kernel queued most on the other worker
        clients.append(Client(server.address("echo")))
        pids.append(answering_pid(clients[-1]))
    first, pid = clients[0], pids[0]
    same = [client for client, other in zip(clients[1:], pids[1:], strict=True) if other == pid]
    assert same, f"no two of {len(clients)} connections share a worker: {pids}"
    return first, same, pid, clients


def nothing_to_read(client: Client) -> bool:
    client.sock.setblocking(False)
    try:
        client.sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        client.sock.setblocking(True)
        client.sock.settimeout(30)
    return False


def connections_by_pid(pidfile) -> dict[int, int]:
    """The ``workers`` table's open connections per worker pid."""
    result = manage("workers", "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    return {int(row.split()[1]): int(row.split()[4]) for row in result.stdout.splitlines()[1:]}


@pytest.mark.parametrize("kind", ["sleep", "burn"])  # waiting on I/O (GIL released), computing (GIL held)
def test_a_slow_event_does_not_hold_up_its_workers_other_connections(start_server, tmp_path, kind):
    pidfile = tmp_path / "s.pid"
    server = start(start_server, f'pidfile = "{pidfile}"\n' + servers_config("echo"), workers=2)  # the default slow_event
    slow, others, pid, clients = neighbours(server)
    uuids = [uuid_of(client) for client in others]
    slow.send(f"{kind} 3\r\n".encode())
    wait_for(lambda: any(e["body"] == f"{kind} 3\r\n" for e in server.events()), what="the slow event")
    for client in others:
        client.send(b"one\r\ntwo\r\n")
        assert client.line() == b"one\r\n" and client.line() == b"two\r\n"
        assert answering_pid(client) != pid  # served by the other worker now
    counts = connections_by_pid(pidfile)  # the scoreboard follows the moves
    assert counts[pid] == 1 and sum(counts.values()) == len(clients)
    assert nothing_to_read(slow)  # all of that happened while the slow event ran
    assert slow.line() == f"{kind} 3\r\n".encode()
    for client in clients:
        client.close()
    for uuid in uuids:  # each moved connection: its events exactly once, in order
        events = server.wait_events(uuid)
        assert kinds(events) == ["CONNECTED"] + ["DATA"] * 5 + ["CLOSE"]
        assert [e["body"] for e in events if e["event"] == "DATA"] == ["pid\r\n", "uuid\r\n", "one\r\n", "two\r\n", "pid\r\n"]
    server.wait_log(r"an event has run for more than 10ms: \d+ other connections moved to other workers")


def test_with_slow_event_zero_the_other_connections_wait(start_server):
    server = start(start_server, servers_config("echo", extra='[tcp.pool]\nslow_event = "0"\n'), workers=2)
    slow, others, pid, clients = neighbours(server)
    slow.send(b"sleep 1\r\n")
    wait_for(lambda: any(e["body"] == "sleep 1\r\n" for e in server.events()), what="the slow event")
    others[0].send(b"ping\r\n")
    assert others[0].line() == b"ping\r\n"
    assert not nothing_to_read(slow)  # the slow event had to end first
    assert answering_pid(others[0]) == pid
    for client in clients:
        client.close()


def reset(pidfile) -> None:
    result = manage("reset", "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr


def test_the_session_moves_with_its_connection(start_server, tmp_path):
    pidfile = tmp_path / "s.pid"
    server = start(start_server, f'pidfile = "{pidfile}"\n' + servers_config("echo"), workers=2)
    with Client(server.address("echo")) as client, Client(server.address("echo")) as fresh:
        client.send(b"get step\r\n")
        assert client.line() == b"-\r\n"  # empty at CONNECTED
        client.send(b"set step rcpt\r\n")
        assert client.line() == b"ok\r\n"
        old = answering_pid(client)
        reset(pidfile)
        server.wait_log(r"retired \(reset\)")
        assert answering_pid(client) != old
        client.send(b"get step\r\n")
        assert client.line() == b"rcpt\r\n"
        fresh.send(b"get step\r\n")
        assert fresh.line() == b"-\r\n"  # each connection has its own


def test_a_session_that_cannot_be_pickled_closes_its_connection_at_handoff(start_server, tmp_path):
    pidfile = tmp_path / "s.pid"
    server = start(start_server, f'pidfile = "{pidfile}"\n' + servers_config("echo"), workers=1)
    with Client(server.address("echo")) as client, Client(server.address("echo")) as kept:
        uuid = uuid_of(client)
        old = answering_pid(client)
        client.send(b"unpicklable handler\r\n")
        assert client.line() == b"ok\r\n"
        reset(pidfile)
        server.wait_log(r"retired \(reset\)")
        assert client.read_to_eof() == b""
        events = server.wait_events(uuid)
        assert kinds(events).count("CLOSE") == 1 and events[-1]["pid"] == old  # delivered in the old worker
        assert answering_pid(kept) != old  # the other connection moved
    server.wait_log(r"closing connection \S+ \(server echo\) instead of handing it over: its session cannot be pickled: key 'handler'")
