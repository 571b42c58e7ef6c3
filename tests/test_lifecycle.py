"""Recycling workers without dropping connections, limits, HUP, TTIN/TTOU, SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from harness import Client, answering_pid, servers_config, wait_for
from harness import uuid_of as connection_uuid

FAST_TICK = '[tcp.pool.supervisor]\nwatch_tick = "100ms"\n'


def assert_kept(server, uuid: str) -> None:
    """The connection saw one CONNECTED and no CLOSE (it is still open)."""
    kinds = [e["event"] for e in server.events_of(uuid)]
    assert kinds.count("CONNECTED") == 1 and "CLOSE" not in kinds, kinds


def keep_talking_until(client: Client, pids: set[int], condition, what: str) -> None:
    """Round trips on one connection until ``condition(pids)`` holds, collecting answering pids."""

    def step():
        pids.add(answering_pid(client))
        return condition(pids)

    wait_for(step, what=what)


def test_max_jobs_recycles_workers_and_keeps_the_connection(start_server):
    server = start_server(servers_config("echo", extra="[tcp.pool]\nmax_jobs = 10\n"), workers=1)
    with Client(server.address("echo")) as client:
        uuid = connection_uuid(client)
        pids: set[int] = set()
        keep_talking_until(client, pids, lambda p: len(p) >= 4, "three recycles")
        assert connection_uuid(client) == uuid
        assert_kept(server, uuid)
        handled = [e["pid"] for e in server.events_of(uuid)]
    assert set(handled) == pids
    assert server.log.count("hands its connections over: handled its max_jobs") >= 3
    events = server.wait_events(uuid)
    assert [e["event"] for e in events].count("CLOSE") == 1
    counts: dict[int, int] = {}
    for e in events:
        counts[e["pid"]] = counts.get(e["pid"], 0) + 1
    assert all(n <= 12 for pid, n in counts.items()), counts  # 10 plus at most 15% jitter


def test_ttl_and_idle_ttl_recycle_with_connections_kept(start_server):
    for key in ("ttl", "idle_ttl"):
        server = start_server(servers_config("echo", extra=FAST_TICK + f'{key} = "1s"\n'), workers=1)
        with Client(server.address("echo")) as client:
            uuid = connection_uuid(client)
            first = answering_pid(client)
            server.wait_log(rf"retiring worker 1 \(pid {first}\): (older than ttl|idle longer than idle_ttl)")
            wait_for(lambda first=first: answering_pid(client) != first, what=f"a new worker after {key}")
            assert connection_uuid(client) == uuid
            assert_kept(server, uuid)
        server.stop()


def test_memory_limit_recycles_keeping_the_connection(start_server):
    server = start_server(servers_config("echo", extra=FAST_TICK + "max_worker_memory = 150\n"), workers=1)
    with Client(server.address("echo")) as client:
        uuid = connection_uuid(client)
        before = answering_pid(client)
        client.send(b"grow 200\r\n")
        assert client.line() == b"grown\r\n"
        server.wait_log(rf"retiring worker \d+ \(pid {before}\): uses \d+ MB \(max_worker_memory 150 MB\)")
        wait_for(lambda: answering_pid(client) != before, what="the replacement")
        assert_kept(server, uuid)


def test_exec_ttl_logs_the_stuck_stack_kills_and_replaces(start_server):
    server = start_server(servers_config("echo", extra=FAST_TICK + 'exec_ttl = "1s"\n'), workers=1)
    with Client(server.address("echo")) as stuck:
        stuck.send(b"sleep 600\r\n")
        line = server.wait_log(r"an event ran longer than exec_ttl \(1s\); killing it")[0]
        assert stuck.read_to_eof() == b""  # that connection is lost
    start = server.lines.index(line)
    stack = "\n".join(server.lines[start : start + 30])
    assert "recorder.py" in stack and "_data" in stack  # the frames of the stuck handler
    server.wait_log(r"worker 1 \(pid \d+\) was killed by SIGKILL \(an event ran longer")
    server.wait_log(r"worker 2 \(pid \d+\) ready")
    with Client(server.address("echo")) as client:
        client.send(b"still serving\r\n")
        assert client.line() == b"still serving\r\n"


def test_hup_replaces_every_worker_keeping_connections_and_applies_the_new_config(start_server, tmp_path):
    server = start_server(servers_config("echo"), workers=None)
    clients = [Client(server.address("echo")) for _ in range(4)]
    uuids = [connection_uuid(c) for c in clients]
    old = set(server.worker_pids())
    config = tmp_path / "server.toml"
    config.write_text(config.read_text() + "[tcp.pool]\nnum_workers = 3\n")
    server.send_signal(signal.SIGHUP)
    server.wait_log("reload complete")
    wait_for(lambda: len(server.worker_pids()) == 3 and not old & set(server.worker_pids()), what="3 new workers")
    for client, uuid in zip(clients, uuids, strict=True):
        assert answering_pid(client) not in old
        assert connection_uuid(client) == uuid
        assert_kept(server, uuid)
        client.close()


def test_hup_with_a_broken_config_keeps_the_workers(start_server, tmp_path):
    server = start_server(servers_config("echo"))
    old = server.worker_pids()
    config = tmp_path / "server.toml"
    config.write_text(config.read_text() + '[log]\nlevel = "loud"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_log('config not reloaded: log.level: expected one of .*, got "loud"; the current workers keep serving')
    with Client(server.address("echo")) as client:
        client.send(b"x\r\n")
        assert client.line() == b"x\r\n"
    assert server.worker_pids() == old


def test_hup_with_an_app_that_no_longer_imports_keeps_the_workers(start_server, tmp_path):
    module = tmp_path / "vanishing_app.py"
    module.write_text("from recorder import main\n")
    server = start_server(servers_config("echo", app="vanishing_app:main"))
    old = server.worker_pids()
    with Client(server.address("echo")) as client:
        uuid = connection_uuid(client)
        module.unlink()
        server.send_signal(signal.SIGHUP)
        server.wait_log("no module named 'vanishing_app'")
        server.wait_log("reload failed: the new workers could not start; the previous workers keep serving")
        assert answering_pid(client) in old
        assert connection_uuid(client) == uuid
    wait_for(lambda: server.worker_pids() == old, what="only the old workers")


def test_ttin_and_ttou_change_the_worker_count_never_below_one(start_server):
    server = start_server(servers_config("echo"), workers=1)
    server.send_signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, what="a second worker")
    server.wait_log(r"worker 2 \(pid \d+\) ready")
    with Client(server.address("echo")) as client:
        uuid = connection_uuid(client)
        server.send_signal(signal.SIGTTOU)
        server.wait_log("SIGTTOU: 1 workers")
        wait_for(lambda: len(server.worker_pids()) == 1, what="one worker")
        (survivor,) = server.worker_pids()
        assert answering_pid(client) == survivor
        server.send_signal(signal.SIGTTOU)
        server.wait_log("SIGTTOU: keeping the last worker")
        assert connection_uuid(client) == uuid
        assert_kept(server, uuid)
    assert server.worker_pids() == [survivor]


def test_sigkill_loses_only_that_workers_connections(start_server):
    server = start_server(servers_config("echo"))
    address = server.address("echo")
    first = Client(address)
    busy_pid = answering_pid(first)
    first.send(b"sleep 1\r\n")  # while that worker sleeps, the other one accepts
    wait_for(lambda: any(e["body"] == "sleep 1\r\n" for e in server.events()), what="the worker to be busy")
    second = Client(address)
    by_pid = {busy_pid: [first], answering_pid(second): [second]}
    assert first.line() == b"sleep 1\r\n"
    clients = [first, second]
    assert len(by_pid) == 2
    victim, survivor = sorted(by_pid)
    os.kill(victim, signal.SIGKILL)
    for c in by_pid[victim]:
        try:
            assert c.read_to_eof() == b""
        except ConnectionResetError:
            pass
    for c in by_pid[survivor]:
        assert answering_pid(c) == survivor
    server.wait_log(r"worker \d+ \(pid \d+\) ready", count=3)
    for c in clients:
        c.close()


def test_unsent_output_and_unread_input_move_with_the_connection(start_server, tmp_path):
    pidfile = tmp_path / "m.pid"
    server = start_server(f'pidfile = "{pidfile}"\n' + servers_config("echo"), workers=1)
    slow = Client(server.address("echo"))
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    uuid = connection_uuid(slow)
    old_pid = answering_pid(slow)
    answers = 12
    slow.send(b"big 1000000\r\n" * answers + b"pid\r\n")  # far more than the high-water mark
    wait_for(lambda: sum(e["body"] == "big 1000000\r\n" for e in server.events_of(uuid)) >= 1, what="a big answer")
    result = subprocess.run(
        [sys.executable, "-m", "prefork_tcp", "reset", "--pidfile", str(pidfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    server.wait_log(r"retired \(reset\)")
    body = slow.read_exactly(answers * 1000002)
    assert body == (b"x" * 1000000 + b"\r\n") * answers  # every byte, in order
    new_pid = int(slow.line())
    assert new_pid != old_pid
    handled = [e["pid"] for e in server.events_of(uuid) if e["body"] == "big 1000000\r\n"]
    assert len(handled) == answers and handled[-1] == new_pid  # later messages ran in the new worker
    assert_kept(server, uuid)
    slow.close()


def test_usr1_reopens_the_log_file(start_server, tmp_path):
    log_file = tmp_path / "server.log"
    server = start_server(servers_config("echo", extra=f'[log]\nfile = "{log_file}"\n'), ready=False)
    wait_for(lambda: log_file.exists() and "serving:" in log_file.read_text(), what="the log file")
    rotated = tmp_path / "server.log.1"
    log_file.rename(rotated)
    server.send_signal(signal.SIGUSR1)
    wait_for(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), what="a new log file")
    assert "log files reopened" not in rotated.read_text()


def test_a_retiring_worker_stuck_in_an_event_is_killed_after_destroy_timeout(start_server, tmp_path):
    pidfile = tmp_path / "m.pid"
    config = f'pidfile = "{pidfile}"\n' + servers_config("echo", extra='[tcp.pool]\ndestroy_timeout = "1s"\n')
    server = start_server(config, workers=1)
    with Client(server.address("echo")) as stuck:
        stuck.send(b"sleep 60\r\n")
        wait_for(lambda: any(e["body"] == "sleep 60\r\n" for e in server.events()), what="the stuck event")
        subprocess.run(
            [sys.executable, "-m", "prefork_tcp", "reset", "--pidfile", str(pidfile)], capture_output=True, timeout=60, check=True
        )
        server.wait_log(r"worker 1 \(pid \d+\) was killed by SIGKILL \(still retiring after destroy_timeout \(1s\)\)")
    with Client(server.address("echo")) as client:
        client.send(b"after\r\n")
        assert client.line() == b"after\r\n"


def test_an_old_worker_retires_only_after_its_replacement_is_ready(start_server):
    # A memory limit (not max_jobs, which is a budget and hands over at once) retires the worker.
    extra = '[tcp.pool]\nallocate_timeout = "2s"\n[tcp.pool.supervisor]\nwatch_tick = "100ms"\nmax_worker_memory = 150\n'
    server = start_server(servers_config("echo", app="recorder:boot_half_second", extra=extra))
    time.sleep(2.5)  # both workers are now older than allocate_timeout
    with Client(server.address("echo")) as client:
        uuid = connection_uuid(client)
        old = answering_pid(client)
        client.send(b"grow 200\r\n")
        assert client.line() == b"grown\r\n"
        retired = server.wait_log(rf"\(pid {old}\) retired")[0]
        ready = server.wait_log(r"worker 3 \(pid \d+\) ready")[0]
        assert server.lines.index(ready) < server.lines.index(retired), server.log
        assert connection_uuid(client) == uuid
