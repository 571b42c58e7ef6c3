"""systemd: notifications to a test-owned NOTIFY_SOCKET, socket activation by the real
``systemd-socket-activate``, and the protocols' parsing on their own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TESTS, Client, connects, free_port, prefork_tcp_program, servers_config, wait_for

from prefork_tcp import systemd

HIGH_FD = 300  # where the parsing tests put "inherited" descriptors, clear of pytest's own


# -- notifications ---------------------------------------------------------------------------


def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    return sock, path


def messages(sock: socket.socket, count: int) -> list[dict[str, str]]:
    found = []
    for _ in range(count):
        lines = sock.recv(4096).decode().split("\n")
        found.append(dict(line.split("=", 1) for line in lines))
    return found


def test_the_notifier_speaks_to_the_socket_it_is_given_and_to_no_other(tmp_path):
    sock, path = notify_socket(tmp_path)
    notifier = systemd.Notifier({"NOTIFY_SOCKET": path})
    notifier.ready("2 workers serving, 0 connections")
    notifier.set_status("2 workers serving, 0 connections")  # unchanged: not sent again
    notifier.stopping()
    assert messages(sock, 2) == [
        {"READY": "1", "STATUS": "2 workers serving, 0 connections"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]
    assert not systemd.Notifier({}).send("READY=1")
    assert not systemd.Notifier({"NOTIFY_SOCKET": "relative/path"}).send("READY=1")


def test_the_notifier_reaches_an_abstract_socket():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"prefork-tcp-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(10)
    assert systemd.Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
    assert sock.recv(100) == b"READY=1"


@pytest.mark.parametrize(
    "environ, interval",
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, 0.0),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, 0.0),
        ({"WATCHDOG_USEC": "soon"}, 0.0),
        ({}, 0.0),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process(tmp_path, environ, interval):
    _, path = notify_socket(tmp_path)
    assert systemd.Notifier({"NOTIFY_SOCKET": path, **environ}).watchdog_interval == interval


def test_notifications_follow_start_reload_and_stop_in_order(start_server, tmp_path):
    sock, path = notify_socket(tmp_path)
    server = start_server(servers_config("echo"), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    first = messages(sock, 1)[0]
    while "WATCHDOG" in first:
        first = messages(sock, 1)[0]
    assert first == {"READY": "1", "STATUS": "2 workers serving, 0 connections"}
    server.send_signal(signal.SIGHUP)
    seen = [m for m in messages(sock, 8) if "WATCHDOG" not in m][:2]
    assert seen[0]["RELOADING"] == "1" and int(seen[0]["MONOTONIC_USEC"]) > 0
    assert seen[1]["READY"] == "1"
    server.wait_log(r"reload complete")
    assert server.stop() == 0
    after = messages(sock, 1)[0]
    while "WATCHDOG" in after or ("STATUS" in after and len(after) == 1):  # the loop's own lines
        after = messages(sock, 1)[0]
    assert after == {"STOPPING": "1", "STATUS": "stopping"}


def test_the_watchdog_is_fed_while_the_loop_runs(start_server, tmp_path):
    sock, path = notify_socket(tmp_path)
    start_server(servers_config("echo"), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert sum("WATCHDOG" in m for m in messages(sock, 12)) >= 8  # every 0.1 s


# -- socket activation: parsing ---------------------------------------------------------------


def listening(kind: int = socket.SOCK_STREAM, listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen()
    return sock


def pass_down(*socks: socket.socket) -> None:
    """Put ``socks`` at HIGH_FD, HIGH_FD + 1, ... as systemd puts them at 3, 4, ..."""
    for index, sock in enumerate(socks):
        os.dup2(sock.fileno(), HIGH_FD + index)
        sock.close()


def environ(count: int, names: str = "", pid: int | None = None) -> dict[str, str]:
    found = {"LISTEN_PID": str(pid or os.getpid()), "LISTEN_FDS": str(count)}
    if names:
        found["LISTEN_FDNAMES"] = names
    return found


def test_inherited_sockets_come_with_their_names():
    socks = [listening(), listening()]
    ports = [s.getsockname()[1] for s in socks]
    pass_down(*socks)
    inherited = systemd.inherited_sockets(environ(2, "smtp:lines"), first=HIGH_FD)
    assert [(name, sock.getsockname()[1]) for name, sock in inherited] == [("smtp", ports[0]), ("lines", ports[1])]
    assert all(not sock.getblocking() and not sock.get_inheritable() for _, sock in inherited)
    for _, sock in inherited:
        sock.close()


def test_sockets_meant_for_another_process_are_not_ours():
    assert systemd.inherited_sockets(environ(2, pid=1), first=HIGH_FD) == []
    assert systemd.inherited_sockets({}, first=HIGH_FD) == []


@pytest.mark.parametrize(
    "make, env, message",
    [
        (lambda: [listening()], environ(1) | {"LISTEN_FDS": "x"}, "LISTEN_FDS: expected a number"),
        (lambda: [listening()], environ(1, "a:b"), "LISTEN_FDNAMES names 2 sockets, LISTEN_FDS says 1"),
        (lambda: [listening(socket.SOCK_DGRAM, listen=False)], environ(1, "a"), "not a listening stream socket"),
        (lambda: [listening(listen=False)], environ(1, "a"), "not a listening stream socket"),
        (lambda: [], environ(1, "a"), "is not a socket"),
    ],
)
def test_inherited_descriptors_that_break_the_protocol_are_errors(make, env, message):
    socks = make()
    pass_down(*socks)
    try:
        with pytest.raises(ValueError, match=message):
            systemd.inherited_sockets(env, first=HIGH_FD)
    finally:
        if socks:
            os.close(HIGH_FD)


def test_sockets_match_servers_by_name_else_in_order():
    a, b = object(), object()
    assert systemd.match(["smtp", "lines"], [("lines", b), ("smtp", a)]) == {"smtp": a, "lines": b}  # type: ignore[list-item]  # stand-ins
    assert systemd.match(["smtp", "lines"], [("", a), ("", b)]) == {"smtp": a, "lines": b}  # type: ignore[list-item]  # stand-ins
    assert systemd.match(["smtp", "lines"], [("x.socket", a), ("x.socket", b)]) == {"smtp": a, "lines": b}  # type: ignore[list-item]  # unit names
    with pytest.raises(ValueError, match="named 'other', and no server has that name"):
        systemd.match(["smtp"], [("other", a)])  # type: ignore[list-item]  # stand-ins
    with pytest.raises(ValueError, match="passed 1 sockets .* for 2 servers"):
        systemd.match(["smtp", "lines"], [("smtp", a)])  # type: ignore[list-item]  # stand-ins
    with pytest.raises(ValueError, match="named 'other', and no server has that name"):
        systemd.match(["smtp", "lines"], [("smtp", a), ("other", b)])  # type: ignore[list-item]  # stand-ins
    with pytest.raises(ValueError, match="two sockets with one name"):
        systemd.match(["smtp", "lines"], [("smtp", a), ("smtp", b)])  # type: ignore[list-item]  # stand-ins


# -- socket activation: the real tool ---------------------------------------------------------

needs_activate = pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="systemd-socket-activate not installed")


def activate(ports: dict[str, int], tmp_path: Path, names: bool = True) -> list[str]:
    """``systemd-socket-activate`` listening on ``ports``, passing the test's environment."""
    prefix = ["systemd-socket-activate"]
    for port in ports.values():
        prefix += ["-l", f"127.0.0.1:{port}"]
    if names:
        prefix += ["--fdname=" + ":".join(ports)]
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return prefix + ["-E", f"PYTHONPATH={pythonpath}", "-E", f"RECORDER_LOG={tmp_path / 'events.jsonl'}"]


@needs_activate
def test_socket_activated_servers_get_their_sockets_by_name(start_server, tmp_path):
    ports = {"lines": free_port(), "smtp": free_port()}  # passed in the other order than configured
    config = servers_config("smtp", "lines")
    server = start_server(config, prefix=activate(ports, tmp_path), ready=False)
    wait_for(lambda: connects(ports["smtp"]), what="systemd-socket-activate listening")  # starts the server
    with Client(("127.0.0.1", ports["smtp"])) as smtp, Client(("127.0.0.1", ports["lines"])) as lines:
        smtp.send(b"hi\r\n")
        assert smtp.line() == b"hi\r\n"
        lines.send(b"ho\r\n")
        assert lines.line() == b"ho\r\n"
    wait_for(lambda: sum(e["event"] == "DATA" for e in server.events()) >= 2, what="the events")
    assert {e["body"]: e["server"] for e in server.events() if e["event"] == "DATA"} == {"hi\r\n": "smtp", "ho\r\n": "lines"}
    assert server.wait_log(r"listening at tcp://127\.0\.0\.1:\d+ \(server smtp, from systemd\)")
    assert server.stop() == 0


@needs_activate
def test_a_socket_named_for_no_server_is_a_config_error(tmp_path):
    port = free_port()
    (tmp_path / "c.toml").write_text(servers_config("smtp"))
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=other"]
        + ["-E", f"PYTHONPATH={TESTS}", sys.executable, "-m", "prefork_tcp", "serve", "-c", str(tmp_path / "c.toml"), "recorder:main"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    try:
        wait_for(lambda: connects(port), what="systemd-socket-activate listening")
        assert proc.wait(30) == 2
        (line,) = proc.stderr.read().strip().splitlines()[-1:]
        assert line == "prefork-tcp: socket activation: systemd passed a socket named 'other', and no server has that name"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the shipped unit files -----------------------------------------------------------------

UNITS = Path(__file__).parent.parent / "conf" / "systemd"


def unit(name: str) -> dict[str, list[str]]:
    """A unit file's settings (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_shipped_units_verify_without_a_warning(tmp_path):
    # systemd-analyze checks that ExecStart's program exists: point it at this one.
    program = prefork_tcp_program()
    for name in ("prefork-tcp.service", "prefork-tcp.socket"):
        (tmp_path / name).write_text((UNITS / name).read_text().replace("/usr/local/bin/prefork-tcp", program))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "prefork-tcp.service"), str(tmp_path / "prefork-tcp.socket")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


def test_the_service_unit_fits_the_servers_stop_and_a_careful_admin():
    service = unit("prefork-tcp.service")
    assert service["Type"] == ["notify"] and service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillMode"] == ["mixed"]  # TERM to the master only: it stops its workers gracefully
    assert int(service["TimeoutStopSec"][0]) > 60  # beyond the default destroy_timeout
    assert int(service["LimitNOFILE"][0]) >= 65536
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")]:
        assert service[key] == [value]
    assert service.get("DynamicUser") == ["yes"] or "User" in service
    assert unit("prefork-tcp.socket")["FileDescriptorName"] == ["default"]  # the default server's name
