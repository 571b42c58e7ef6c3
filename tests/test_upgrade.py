"""USR2 and ``prefork-tcp upgrade``: a new master takes over every listening socket and every
open connection from the real server, or fails and leaves the old one serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from harness import Client, answering_pid, connects, free_port, kinds, manage, servers_config, uuid_of, wait_for
from hypothesis import given
from hypothesis import strategies as st
from test_systemd import activate, messages, needs_activate, notify_socket

from prefork_tcp import upgrade
from prefork_tcp.upgrade import Inheritance, PassedSocket


def pidfile_config(tmp_path: Path, *names: str, extra: str = "") -> str:
    return f'pidfile = "{tmp_path / "master.pid"}"\n' + servers_config(*names, extra=extra)


def read_pid(tmp_path: Path) -> int:
    return int((tmp_path / "master.pid").read_text())


def test_an_upgrade_keeps_every_connection_with_its_uuid_session_input_and_output(start_server, tmp_path):
    server = start_server(pidfile_config(tmp_path, "echo"))
    first = server.proc.pid
    clients = [Client(server.address("echo")) for _ in range(12)]
    uuids = [uuid_of(c) for c in clients]
    for index, client in enumerate(clients):
        client.send(f"set n {index}\r\n".encode())
        assert client.line() == b"ok\r\n"
    clients[0].send(b"hel")  # unread input: the rest of the message comes after the upgrade
    clients[1].send(b"big 4000000\r\n")  # unsent output: read only after the upgrade
    wait_for(lambda: any(e["body"] == "big 4000000\r\n" for e in server.events()), what="the big answer to be written")

    second = server.upgrade()
    assert server.proc.wait(30) == 0  # the old master exits cleanly once it handed everything over
    third = server.upgrade()
    assert read_pid(tmp_path) == third != second != first

    assert clients[1].read_exactly(4000002) == b"x" * 4000000 + b"\r\n"
    clients[0].send(b"lo\r\n")
    assert clients[0].line() == b"hello\r\n"
    workers = set(server.worker_pids())
    for index, (client, uuid) in enumerate(zip(clients, uuids, strict=True)):
        assert uuid_of(client) == uuid
        client.send(b"get n\r\n")
        assert client.line() == f"{index}\r\n".encode()
        assert answering_pid(client) in workers
    for uuid in uuids:
        assert kinds(server.events_of(uuid)).count("CONNECTED") == 1
        assert "CLOSE" not in kinds(server.events_of(uuid))
    assert server.stop() is None  # the master in charge is not this test's child
    for uuid in uuids:  # the graceful stop of the third master delivers each CLOSE once
        assert kinds(server.events_of(uuid)).count("CLOSE") == 1
    assert not (tmp_path / "master.pid").exists() and not (tmp_path / "master.pid.sock").exists()


def test_the_upgrade_command_waits_for_the_new_master_which_answers_the_control_socket(start_server, tmp_path):
    server = start_server(pidfile_config(tmp_path, "echo"))
    old = server.proc.pid
    result = manage("upgrade", "--pidfile", str(tmp_path / "master.pid"))
    new = read_pid(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"upgraded: master {new} serves every connection (was {old})"
    server.master = new
    assert server.proc.wait(30) == 0
    rows = manage("workers", "--pidfile", str(tmp_path / "master.pid")).stdout.splitlines()[1:]
    assert sorted(int(row.split()[1]) for row in rows) == server.worker_pids() and len(rows) == 2


@pytest.mark.parametrize(
    "breakage, outcome",
    [
        ("bogus_key = 1\n", r"exited with code 2 \(usage or config error\): bogus_key: unknown key"),
        ('app = "no_such_module:main"\n', r"exited with code 4 \(application could not be imported\): cannot import application"),
    ],
)
def test_a_broken_upgrade_leaves_the_old_master_serving_and_says_why(start_server, tmp_path, breakage, outcome):
    socket_path = tmp_path / "lines.sock"
    good = pidfile_config(tmp_path, "echo", extra=f'[tcp.servers.lines]\naddr = "unix://{socket_path}"\n')
    server = start_server(good)
    old = server.proc.pid
    with Client(server.address("echo")) as client, Client(str(socket_path)) as local:
        uuid = uuid_of(client)
        (tmp_path / "server.toml").write_text(breakage + good.replace('app = "recorder:main"\n', "", breakage.startswith("app")))
        result = manage("upgrade", "--pidfile", str(tmp_path / "master.pid"))
        assert result.returncode == 1
        assert result.stderr.startswith("prefork-tcp: upgrade failed: the new master (pid ")
        assert result.stderr.rstrip().endswith(f"; master {old} keeps serving")
        server.wait_log(r"\[ERROR\] upgrade failed: the new master \(pid \d+\) " + outcome)
        assert read_pid(tmp_path) == old and server.proc.poll() is None
        assert uuid_of(client) == uuid  # the old master's workers serve on
        local.send(b"still\r\n")
        assert local.line() == b"still\r\n"
        with Client(str(socket_path)) as fresh:  # the failed master left the socket files alone
            fresh.send(b"new\r\n")
            assert fresh.line() == b"new\r\n"
        (tmp_path / "server.toml").write_text(good)  # fixed: the next upgrade works
        new = server.upgrade()
        assert uuid_of(client) == uuid and answering_pid(client) in server.worker_pids()
        assert read_pid(tmp_path) == new


def test_a_second_upgrade_is_refused_while_one_runs_and_a_stop_ends_both_masters(start_server, tmp_path):
    config = pidfile_config(tmp_path, "echo", extra='[tcp.pool]\ndestroy_timeout = "5s"\n')
    server = start_server(config)
    (tmp_path / "server.toml").write_text(config.replace("recorder:main", "recorder:slow_boot"))
    server.send_signal(signal.SIGUSR2)
    successor = wait_for(server.upgrading, what="the new master")
    server.send_signal(signal.SIGUSR2)
    server.wait_log(rf"upgrade refused: an upgrade is in progress \(new master {successor}\)")
    result = manage("upgrade", "--pidfile", str(tmp_path / "master.pid"), "--wait", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == f"prefork-tcp: upgrade refused: an upgrade is in progress (new master {successor})"
    assert manage("reload", "--pidfile", str(tmp_path / "master.pid")).returncode == 0
    server.wait_log(r"not reloading: an upgrade is in progress")
    assert server.stop() == 0
    assert not psutil.pid_exists(successor)  # the old master waited for it, and reaped it
    server.wait_log(r"stopping the new master \d+ too")
    assert not (tmp_path / "master.pid").exists() and not (tmp_path / "master.pid.sock").exists()


def test_the_new_master_binds_added_servers_keeps_renamed_ones_and_drops_removed_ones(start_server, tmp_path):
    path = tmp_path / "lines.sock"
    unix = f'[tcp.servers.{{}}]\naddr = "unix://{path}"\n'
    server = start_server(pidfile_config(tmp_path, "echo", "gone", extra=unix.format("lines")))
    kept = server.address("echo")
    with Client(kept) as client, Client(str(path)) as local:
        uuids = uuid_of(client), uuid_of(local)
        # "lines" renamed at the same address: the new master takes its socket (binding would fail)
        (tmp_path / "server.toml").write_text(pidfile_config(tmp_path, "echo", "added", extra=unix.format("renamed")))
        server.upgrade()
        assert (uuid_of(client), uuid_of(local)) == uuids
    assert server.address("echo") == kept and server.address("renamed") == str(path)
    for address in (server.address("added"), str(path)):
        with Client(address) as fresh:
            fresh.send(b"hi\r\n")
            assert fresh.line() == b"hi\r\n"
    server.wait_log(r"servers no longer configured: gone \(they close when the old master exits\)")
    assert server.stop() is None and not path.exists()


RELEASE = """from prefork_tcp import TcpEvent


def main(worker):
    while (request := worker.wait_request()) is not None:
        if request.event is TcpEvent.DATA:
            worker.respond(b"{version}\\r\\n")
        elif request.event is TcpEvent.CONNECTED:
            worker.read()
"""


def test_an_upgrade_runs_the_release_a_symlinked_directory_points_to_now(start_server, tmp_path):
    for version in ("one", "two"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "release.py").write_text(RELEASE.format(version=version))
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "one")
    config = pidfile_config(tmp_path, "echo").replace("recorder:main", "release:main")
    server = start_server(config, cwd=current, env={"PWD": str(current)})
    with Client(server.address("echo")) as client:
        client.send(b"version\r\n")
        assert client.line() == b"one\r\n"
        current.unlink()
        current.symlink_to(tmp_path / "two")  # a deploy: the new release, switched by symlink
        server.upgrade()
        client.send(b"version\r\n")
        assert client.line() == b"two\r\n"  # the same connection, served by the new code


def test_an_upgrade_under_systemd_moves_the_main_pid_to_the_new_master(start_server, tmp_path):
    sock, path = notify_socket(tmp_path)
    server = start_server(pidfile_config(tmp_path, "echo"), env={"NOTIFY_SOCKET": path})
    assert messages(sock, 1)[0]["READY"] == "1"
    new = server.upgrade()
    seen = []
    while not seen or "READY" not in seen[-1]:
        seen += messages(sock, 1)
    handover = [m for m in seen if "MAINPID" in m]
    assert handover == [{"MAINPID": str(new), "STATUS": f"upgraded: master {new} serves"}]
    assert seen.index(handover[0]) < len(seen) - 1  # READY=1 from the new master comes after it


@needs_activate
def test_sockets_systemd_passed_stay_systemds_through_an_upgrade(start_server, tmp_path):
    port = free_port()
    server = start_server(pidfile_config(tmp_path, "echo"), prefix=activate({"echo": port}, tmp_path), ready=False)
    wait_for(lambda: connects(port), what="systemd-socket-activate listening")
    server.wait_ready()
    with Client(("127.0.0.1", port)) as client:
        uuid = uuid_of(client)
        server.upgrade()
        assert uuid_of(client) == uuid
    assert len(server.wait_log(rf"listening at tcp://127\.0\.0\.1:{port} \(server echo, from systemd\)", count=2)) == 2


def test_a_forged_upgrade_variable_is_a_usage_error(tmp_path):
    forged = upgrade.encode(Inheritance(os.getpid() + 1, 3))
    result = subprocess.run(
        [sys.executable, "-m", "prefork_tcp", "serve", "m:f", "-b", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, upgrade.ENV: forged},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"prefork-tcp: {upgrade.ENV} was set by process {os.getpid() + 1}, not by this process's parent ({os.getpid()})"
    )


# -- the variable on its own ------------------------------------------------------------------

_names = st.text(min_size=1, max_size=20)
_addresses = st.builds("tcp://127.0.0.1:{}".format, st.integers(0, 65535)) | st.builds("unix:///{}".format, _names)


@given(
    st.integers(1, 1 << 22),
    st.lists(st.tuples(_names, _addresses, st.booleans()), max_size=5),
    st.none() | _names,
    st.none() | st.builds("tcp://127.0.0.1:{}".format, st.integers(0, 65535)),
)
def test_what_an_old_master_passes_reads_back_the_same(master, listeners, control, metrics):
    passed = tuple(PassedSocket(name, address, 10 + index, systemd) for index, (name, address, systemd) in enumerate(listeners))
    inheritance = Inheritance(master, 3, passed, (control, 4) if control is not None else None, (metrics, 5) if metrics else None)
    text = upgrade.encode(inheritance)
    assert upgrade.decode(text, master) == inheritance
    assert json.loads(text)["version"] == (2 if metrics else 1)  # what a master without metrics passes, older ones read


def test_a_metrics_endpoint_in_version_1_is_refused():
    text = json.dumps({"version": 1, "master": 7, "channel": 3, "control": None, "metrics": ["tcp://127.0.0.1:1", 4], "listeners": []})
    with pytest.raises(ValueError, match="version 1 passes no metrics endpoint"):
        upgrade.decode(text, 7)


@given(st.text(max_size=200) | st.builds(json.dumps, st.recursive(st.none() | st.integers() | st.text(), st.lists, max_leaves=8)))
def test_anything_else_in_the_variable_is_a_value_error(text):
    try:
        upgrade.decode(text, 1)
    except ValueError:
        pass


@pytest.mark.parametrize(
    "inheritance, why",
    [
        (Inheritance(7, 3, (PassedSocket("a", "x", 3),)), "descriptors must be distinct"),
        (Inheritance(7, 2), "descriptors must be distinct numbers from 3 on"),
        (Inheritance(8, 3), "was set by process 8"),
    ],
)
def test_the_variable_must_name_distinct_descriptors_and_this_processs_parent(inheritance, why):
    with pytest.raises(ValueError, match=why):
        upgrade.decode(upgrade.encode(inheritance), 7)


def test_the_new_master_runs_the_same_command_line():
    assert upgrade.program() == [sys.executable, *sys.orig_argv[1:]]
    assert psutil.Process().cmdline()[1:] == sys.orig_argv[1:]


def test_a_new_master_takes_passed_sockets_by_name_and_address_only(monkeypatch):
    monkeypatch.setattr(os, "getppid", lambda: 4242)
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.create_server(("127.0.0.1", 0))
    environ = {
        upgrade.ENV: upgrade.encode(
            Inheritance(4242, os.dup(pair[1].fileno()), (PassedSocket("echo", "tcp://127.0.0.1:0", os.dup(listener.fileno())),))
        )
    }
    predecessor = upgrade.Predecessor.from_environment(environ)
    assert predecessor is not None and upgrade.ENV not in environ
    assert predecessor.take_listener("echo", "tcp://127.0.0.1:1") is None
    taken = predecessor.take_listener("echo", "tcp://127.0.0.1:0")
    assert taken is not None and taken[0].getsockname() == listener.getsockname() and taken[1] is False
    assert predecessor.close_untaken() == []
    taken[0].close()
    predecessor.close()
    for sock in (*pair, listener):
        sock.close()
