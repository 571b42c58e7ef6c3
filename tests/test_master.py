"""The master: signals, stopping, replacing workers, boot failures, titles, pidfile."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
from harness import Client, servers_config, uuid_of, wait_for


def test_term_delivers_close_to_every_connection_and_exits_zero(start_server):
    server = start_server(servers_config("echo"))
    clients = [Client(server.address("echo")) for _ in range(6)]
    for i, client in enumerate(clients):
        client.send(b"%d\r\n" % i)
        assert client.line() == b"%d\r\n" % i
    workers = server.worker_pids()
    assert server.stop(signal.SIGTERM) == 0
    for client in clients:
        assert client.read_to_eof() == b""  # closed by the server, not reset
        client.close()
    events = server.events()
    uuids = {e["uuid"] for e in events}
    assert len(uuids) == 6
    for uuid in uuids:
        assert [e["event"] for e in events if e["uuid"] == uuid] == ["CONNECTED", "DATA", "CLOSE"]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)


def test_term_lets_the_current_event_finish(start_server):
    server = start_server(servers_config("echo"), workers=1)
    with Client(server.address("echo")) as client:
        client.send(b"sleep 1\r\n")
        wait_for(lambda: any(e["body"] == "sleep 1\r\n" for e in server.events()), what="the slow event")
        server.send_signal(signal.SIGTERM)
        assert client.read_to_eof() == b"sleep 1\r\n"
    assert server.stop() == 0


def test_quick_stop_on_int_and_quit(start_server):
    """A quick stop drops unsent output instead of waiting for it (a graceful stop would
    wait up to half of destroy_timeout for a reader that never reads), delivers CLOSE to
    every connection once, and exits 0."""
    extra = '[tcp.pool]\ndestroy_timeout = "20s"\n'
    for signum in (signal.SIGINT, signal.SIGQUIT):
        server = start_server(servers_config("echo", extra=extra), workers=1)
        with Client(server.address("echo")) as stalled, Client(server.address("echo")) as idle:
            stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            uuids = [uuid_of(c) for c in (stalled, idle)]
            stalled.send(b"big 50000000\r\n")  # far more than the kernel buffers: most stays unsent
            server.wait_events(uuids[0], last="DATA")
            started = time.monotonic()
            assert server.stop(signum) == 0
            assert time.monotonic() - started < 8  # not the 10 s a graceful stop would wait
        for uuid in uuids:
            assert [e["event"] for e in server.events_of(uuid)].count("CLOSE") == 1


def test_stuck_worker_is_killed_after_destroy_timeout(start_server):
    server = start_server(servers_config("echo", extra='[tcp.pool]\ndestroy_timeout = "1s"\n'), workers=1)
    with Client(server.address("echo")) as client:
        client.send(b"sleep 60\r\n")
        wait_for(lambda: any(e["body"] == "sleep 60\r\n" for e in server.events()), what="the stuck event")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 20
    assert "did not stop in time; killing it" in server.log


def test_killed_worker_is_replaced_and_service_continues(start_server):
    server = start_server(servers_config("echo"))
    address = server.address("echo")
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_log(rf"\(pid {victim}\) was killed by SIGKILL; starting a replacement")
    wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), what="a replacement")
    server.wait_log(r"worker 3 \(pid \d+\) ready")
    for _ in range(10):
        with Client(address) as client:
            client.send(b"alive\r\n")
            assert client.line() == b"alive\r\n"


def test_missing_app_exits_4_with_the_cause_once(start_server):
    server = start_server(servers_config("echo", app="no_such_module_here:main"), ready=False)
    assert server.proc.wait(30) == 4
    server.stop()
    assert server.log.count("no module named 'no_such_module_here'") == 1
    assert "Traceback" not in server.log


def test_app_whose_import_fails_exits_4_with_its_traceback_once(start_server):
    server = start_server(servers_config("echo", app="broken_app:main"), ready=False)
    assert server.proc.wait(30) == 4
    server.stop()
    assert server.log.count("Traceback") == 1
    assert "prefork_tcp_test_missing_dependency" in server.log


def test_app_failing_before_ready_exits_3_without_a_fork_loop(start_server):
    server = start_server(servers_config("echo", app="recorder:fail_before_ready"), workers=2, ready=False)
    assert server.proc.wait(30) == 3
    server.stop()
    assert server.log.count("RuntimeError: database unreachable") == 1
    assert server.log.count("no worker could start") == 1


def test_titles_and_pidfile(start_server, tmp_path):
    pidfile = tmp_path / "master.pid"
    server = start_server(servers_config("echo"), args=["--pidfile", str(pidfile)])
    wait_for(pidfile.exists, what="the pidfile")
    assert int(pidfile.read_text()) == server.proc.pid
    wait_for(lambda: psutil.Process(server.proc.pid).cmdline()[0].startswith("prefork-tcp: master"), what="the master's title")
    assert " ".join(psutil.Process(server.proc.pid).cmdline()).strip() == "prefork-tcp: master [recorder:main]"
    titles = sorted(" ".join(psutil.Process(pid).cmdline()).strip() for pid in server.worker_pids())
    assert titles == ["prefork-tcp: worker 1 [recorder:main]", "prefork-tcp: worker 2 [recorder:main]"]
    assert server.stop() == 0
    assert not pidfile.exists()


def test_the_master_never_accepts(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"x\r\n")
        client.line()
        master = psutil.Process(server.proc.pid)
        established = [c for c in master.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED]
        assert established == []


def test_bind_failure_exits_1_and_names_the_server(start_server):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        server = start_server(f'app = "recorder:main"\n[tcp.servers.busy]\naddr = "127.0.0.1:{port}"\n', ready=False)
        assert server.proc.wait(30) == 1
        server.stop()
        assert f"cannot listen on tcp://127.0.0.1:{port} (server busy)" in server.log
        assert "Traceback" not in server.log
    finally:
        holder.close()


def test_worker_not_ready_within_allocate_timeout_is_a_boot_failure(start_server):
    config = servers_config("echo", app="recorder:slow_boot", extra='[tcp.pool]\nallocate_timeout = "1s"\n')
    server = start_server(config, workers=1, ready=False)
    assert server.proc.wait(30) == 3
    server.stop()
    assert server.log.count("was not ready after 1s (allocate_timeout); killed") == 1


def test_failing_replacements_are_retried_with_backoff_and_never_halt(start_server, tmp_path):
    marker = tmp_path / "fail"
    server = start_server(servers_config("echo", app="recorder:fails_while_marked"), workers=1, env={"FAIL_MARKER": str(marker)})
    marker.touch()
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    server.wait_log(r"failed to start \(1 in a row\); retrying in 0.5s")
    server.wait_log(r"failed to start \(2 in a row\); retrying in 1.0s")
    assert server.proc.poll() is None
    marker.unlink()
    server.wait_log(r"worker \d+ \(pid \d+\) ready", count=2)
    with Client(server.address("echo")) as client:
        client.send(b"back\r\n")
        assert client.line() == b"back\r\n"
    assert server.log.count("RuntimeError: marker present") >= 2
