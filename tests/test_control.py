"""Management commands against a running server, and close_connection() from the app."""

from __future__ import annotations

import stat

import pytest
from harness import Client, manage, servers_config, uuid_of, wait_for


def start(start_server, tmp_path, workers=2, extra=""):
    pidfile = tmp_path / "master.pid"
    server = start_server(f'pidfile = "{pidfile}"\n' + servers_config("echo", extra=extra), workers=workers)
    wait_for(lambda: (tmp_path / "master.pid.sock").exists(), what="the control socket")
    return server, str(tmp_path / "server.toml")


def test_control_socket_is_private_and_found_three_ways(start_server, tmp_path):
    server, config = start(start_server, tmp_path)
    sock = tmp_path / "master.pid.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    for how in (["-c", config], ["--pidfile", str(tmp_path / "master.pid")], ["--control", str(sock)]):
        result = manage("workers", *how)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["ID", "PID", "STATE", "EVENTS", "CONNS", "RSS", "MB", "AGE"]
        assert sorted(int(line.split()[1]) for line in lines[1:]) == server.worker_pids()
    assert server.stop() == 0
    assert not sock.exists()


def test_workers_table_counts_events_and_connections(start_server, tmp_path):
    server, config = start(start_server, tmp_path, workers=1)
    with Client(server.address("echo")) as client:
        for _ in range(5):
            client.send(b"x\r\n")
            client.line()
        rows = manage("workers", "-c", config).stdout.splitlines()[1:]
        (row,) = [line.split() for line in rows]
        assert row[2] == "serving" and row[3] == "6" and row[4] == "1"  # CONNECTED + 5 DATA, 1 open


@pytest.mark.parametrize("limit", ['exec_ttl = "1m"', 'idle_ttl = "1h"'])
def test_workers_table_tells_busy_from_idle_when_a_limit_needs_it(start_server, tmp_path, limit):
    server, config = start(start_server, tmp_path, workers=1, extra=f"[tcp.pool.supervisor]\n{limit}\n")

    def state() -> str:
        (row,) = [line.split() for line in manage("workers", "-c", config).stdout.splitlines()[1:]]
        return row[2]

    with Client(server.address("echo")) as client:
        client.send(b"x\r\n")
        client.line()
        wait_for(lambda: state() == "idle", what="the worker idle")
        client.send(b"sleep 10\r\n")
        wait_for(lambda: state() == "busy", what="the worker busy in its event")


def test_reset_replaces_workers_keeping_connections(start_server, tmp_path):
    server, config = start(start_server, tmp_path)
    old = set(server.worker_pids())
    with Client(server.address("echo")) as client:
        uuid = uuid_of(client)
        assert manage("reset", "-c", config).returncode == 0
        server.wait_log("retiring worker .*: reset", count=2)
        wait_for(lambda: len(server.worker_pids()) == 2 and not old & set(server.worker_pids()), what="new workers")
        assert uuid_of(client) == uuid
        client.send(b"pid\r\n")
        assert int(client.line()) not in old
    kinds = [e["event"] for e in server.wait_events(uuid)]
    assert kinds.count("CONNECTED") == 1 and kinds.count("CLOSE") == 1


def test_add_and_remove_worker(start_server, tmp_path):
    server, config = start(start_server, tmp_path, workers=1)
    assert manage("add-worker", "-c", config).stdout.strip() == "2 workers"
    wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
    assert manage("remove-worker", "-c", config).stdout.strip() == "1 workers"
    wait_for(lambda: len(server.worker_pids()) == 1, what="one worker")
    assert manage("remove-worker", "-c", config).stdout.strip() == "1 workers"


def test_close_by_uuid_reaches_any_worker_and_the_owner_delivers_close(start_server, tmp_path):
    server, config = start(start_server, tmp_path)
    address = server.address("echo")
    first = Client(address)
    busy_pid = int((first.send(b"pid\r\n"), first.line())[1])
    first.send(b"sleep 1\r\n")  # the other worker takes the next connection
    wait_for(lambda: any(e["body"] == "sleep 1\r\n" for e in server.events()), what="the worker to be busy")
    second = Client(address)
    second.send(b"pid\r\n")
    other_pid = int(second.line())
    assert other_pid != busy_pid
    assert first.line() == b"sleep 1\r\n"
    target = uuid_of(first)
    second.send(f"kill {target}\r\n".encode())  # from the app, in another worker
    assert second.line() == b"found\r\n"
    assert first.read_to_eof() == b""
    closes = [e for e in server.wait_events(target) if e["event"] == "CLOSE"]
    assert [e["pid"] for e in closes] == [busy_pid]
    second.send(b"kill 00000000-0000-4000-8000-000000000000\r\n")
    assert second.line() == b"missing\r\n"
    third = Client(address)
    victim = uuid_of(third)
    result = manage("close", victim, "-c", config)
    assert result.returncode == 0 and result.stdout.strip() == f"closed {victim}"
    assert third.read_to_eof() == b""
    missing = manage("close", victim, "-c", config)
    assert missing.returncode == 1 and missing.stderr.strip() == f"prefork-tcp: no connection with uuid {victim}"
    second.close()


def test_reload_and_stop_commands(start_server, tmp_path):
    server, config = start(start_server, tmp_path)
    old = set(server.worker_pids())
    assert manage("reload", "-c", config).returncode == 0
    server.wait_log("reload complete")
    wait_for(lambda: not old & set(server.worker_pids()), what="new workers")
    assert manage("stop", "--quick", "-c", config).returncode == 0
    assert server.proc.wait(30) == 0
    server.wait_log("stopping quickly")


def test_management_errors_are_one_line(tmp_path):
    nowhere = manage("workers", "--control", str(tmp_path / "none.sock"))
    assert nowhere.returncode == 1
    assert nowhere.stderr.strip() == f"prefork-tcp: no control socket at {tmp_path / 'none.sock'}: is the server running?"
    unnamed = manage("workers")
    assert unnamed.returncode == 2 and "--control SOCKET, -c FILE or --pidfile F" in unnamed.stderr
