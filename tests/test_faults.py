"""Faults the master and workers must survive: crashing applications, budgets, log rotation,
control-socket abuse, broken reloads, signal floods, full channels, garbage from a worker,
a trampled scoreboard, a control socket already taken (SPEC §2, §5, §6)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import uuid as uuids
from pathlib import Path

import pytest
from harness import Client, answering_pid, closed_by_server, kinds, servers_config, start, uuid_of, wait_for

FAST_TICK = '[tcp.pool.supervisor]\nwatch_tick = "100ms"\n'
CRASH = "the client asked for a crash"


def assert_alive(server) -> None:
    assert server.proc.poll() is None, f"the master exited with code {server.proc.returncode}:\n{server.log}"


def start_controlled(start_server, tmp_path: Path, extra: str = "", workers: int = 1):
    """Start the echo server with a control socket; return it and the socket's path once it exists."""
    server = start(start_server, servers_config("echo", extra='[control]\nsocket = "ctl.sock"\n' + extra), workers=workers)
    path = str(tmp_path / "ctl.sock")
    wait_for(lambda: os.path.exists(path), what="the control socket")
    return server, path


def connect_control(path: str, timeout: float = 10.0) -> socket.socket:
    """Connect to a control socket, waiting while its accept queue is full."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:  # the queue is full (a unix socket says EAGAIN): try again
            sock.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: accept queue full for {timeout}s") from None
            time.sleep(0.005)
        except BaseException:
            sock.close()
            raise


def control(path: str, request: dict, timeout: float = 10.0) -> tuple[dict, float]:
    """Send one control request; return the reply and how long it took."""
    started = time.monotonic()
    with connect_control(path, timeout) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the master closed the connection without a whole reply: {data[:200]!r}")
            data += chunk
    return json.loads(data), time.monotonic() - started


def ask_workers(server, path: str, timeout: float = 10.0) -> dict:
    """The master's ``workers`` answer; if there is none, fail with the master's exit and log."""
    try:
        reply, _ = control(path, {"command": "workers"}, timeout)
    except OSError as exc:
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        assert_alive(server)
        raise AssertionError(f"no answer to workers: {exc}\n{server.log}") from None
    assert reply.get("ok"), reply
    return reply


def echo_works(address) -> None:
    with Client(address, timeout=15) as client:
        client.send(b"hello\r\n")
        assert client.line() == b"hello\r\n"


# -- B.1 an exception escaping the application -------------------------------------------------


def test_app_exception_writes_the_answers_given_then_closes_that_connection(start_server):
    server = start(start_server, servers_config("echo"))
    (first,) = server.worker_pids()
    with Client(server.address("echo"), timeout=15) as client:
        client.send(b"a\r\nraise\r\n")  # one send: both messages come from one read
        assert closed_by_server(client) == b"a\r\n", "the answer given before the crash was not written"
    server.wait_log(f"RuntimeError: {CRASH}")
    lines = list(server.lines)
    end = next(i for i, line in enumerate(lines) if f"RuntimeError: {CRASH}" in line)
    starts = [i for i, line in enumerate(lines[:end]) if "Traceback" in line]
    assert starts, f"no traceback logged:\n{server.log}"
    assert any("recorder.py" in line for line in lines[starts[-1] : end]), server.log
    wait_for(lambda: server.worker_pids() and first not in server.worker_pids(), what="a replacement worker")
    echo_works(server.address("echo"))
    assert_alive(server)


def test_app_exception_hands_the_workers_other_connections_over(start_server):
    server = start(start_server, servers_config("echo"))
    bystander = Client(server.address("echo"), timeout=30)
    bystander_uuid = uuid_of(bystander)
    first = answering_pid(bystander)
    with Client(server.address("echo"), timeout=15) as crasher:
        assert answering_pid(crasher) == first  # the same (only) worker
        crasher.send(b"raise\r\n")
        closed_by_server(crasher)
    server.wait_log(f"RuntimeError: {CRASH}")
    later = answering_pid(bystander)  # served on, by the replacement
    assert later != first
    assert uuid_of(bystander) == bystander_uuid
    events = kinds(server.events_of(bystander_uuid))
    assert events.count("CONNECTED") == 1 and "CLOSE" not in events, events
    bystander.close()


def test_repeated_app_crashes_back_off_and_the_master_stays_up(start_server):
    server = start(start_server, servers_config("echo"))
    address = server.address("echo")
    for _ in range(3):
        with Client(address, timeout=30) as client:
            client.send(b"raise\r\n")
            closed_by_server(client)  # the worker crashed (maybe after a back-off, once it was up)
        assert_alive(server)
    assert len(server.wait_log(f"RuntimeError: {CRASH}", count=3)) == 3
    server.wait_log(r"(?i)back(ing)?[ -]?off|retrying in|times in a row|next one starts in", timeout=15)
    assert_alive(server)
    echo_works(address)


# -- B.2 max_jobs is a budget ----------------------------------------------------------------------


def test_max_jobs_is_a_budget_under_concurrent_load(start_server):
    max_jobs, rounds = 20, 150
    server = start(start_server, servers_config("echo", extra=f"[tcp.pool]\nmax_jobs = {max_jobs}\n"))
    address = server.address("echo")
    results: dict[int, tuple[str, list[int]]] = {}
    failures: list[BaseException] = []

    def talk(index: int) -> None:
        try:
            with Client(address, timeout=30) as client:
                uuid = uuid_of(client)
                answers = [answering_pid(client) for _ in range(rounds)]
                results[index] = (uuid, answers)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=talk, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 40
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not failures, failures
    assert len(results) == 3, "a client did not finish within 40 s"
    for uuid, answers in results.values():
        server.wait_events(uuid)
        handled_by = [e["pid"] for e in server.events_of(uuid) if e["body"] == "pid\r\n"]
        assert answers == handled_by, "an answer did not come from the worker that handled the request"
        assert len(answers) == rounds
    counts: dict[int, int] = {}
    for event in server.events():
        counts[event["pid"]] = counts.get(event["pid"], 0) + 1
    budget = int(max_jobs * 1.15) + 3  # max_jobs, its jitter, and the events already read
    over = {pid: n for pid, n in counts.items() if n > budget}
    assert not over, f"workers handled more than {budget} events: {over} (all: {counts})"


# -- B.3 USR1 reopens the log file in the workers too -------------------------------------------


def test_usr1_reopens_the_log_file_in_the_workers_too(start_server, tmp_path):
    log_file = tmp_path / "server.log"
    server = start_server(servers_config("echo", extra='[log]\nfile = "server.log"\n'), workers=1, ready=False)

    def text(path: Path) -> str:
        return path.read_text() if path.exists() else ""

    def served() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.log}\n{text(log_file)}")
        return "serving:" in text(log_file)

    wait_for(served, what="the server to log to server.log")
    port = int(re.search(r"listening at tcp://127\.0\.0\.1:(\d+) \(server echo\)", text(log_file)).group(1))
    rotated = tmp_path / "server.log.1"
    log_file.rename(rotated)
    server.send_signal(signal.SIGUSR1)
    wait_for(lambda: "reopened" in text(log_file), what="the master's line in the new server.log")

    def holding_rotated() -> list[int]:
        """Workers that still have the rotated file open."""
        holders = []
        for pid in server.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(rotated):
                        holders.append(pid)
                except OSError:
                    pass
        return holders

    try:
        wait_for(lambda: not holding_rotated(), timeout=10, what="the workers to reopen the log file")
    except AssertionError:
        raise AssertionError(f"workers {holding_rotated()} still write to the rotated server.log.1") from None
    with Client(("127.0.0.1", port), timeout=15) as client:
        client.send(b"errormsg after rotation\r\n")
        assert closed_by_server(client) == b""
    wait_for(lambda: "after rotation" in text(log_file) + text(rotated), what="the worker's log line")
    assert "after rotation" not in text(rotated), "the worker still writes to the rotated file"
    assert "after rotation" in text(log_file)


# -- B.4 the control socket under abuse -------------------------------------------------------------


class Monitor:
    """Asks the master for ``workers`` every 0.2 s in a thread, recording how long each took."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                reply, took = control(self.path, {"command": "workers"}, timeout=10)
                self.latencies.append(took)
                if not reply.get("ok"):
                    self.failures.append(f"refused: {reply}")
            except (OSError, ValueError) as exc:
                self.failures.append(f"workers request failed after {time.monotonic() - started:.1f}s: {type(exc).__name__}: {exc}")
            self.done.wait(0.2)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(15)

    def check(self) -> None:
        assert not self.failures, self.failures
        assert self.latencies, "no workers request was answered"
        slow = [round(t, 2) for t in self.latencies if t >= 2.0]
        assert not slow, f"workers requests took {slow} s (answered: {len(self.latencies)})"


def abuse(server, path: str, payload: bytes, half_close: bool = True) -> None:
    """Send ``payload`` as a control request; the master must answer or drop it within a few seconds."""
    try:
        sock = connect_control(path)
    except (FileNotFoundError, ConnectionRefusedError):
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        assert_alive(server)
        raise
    with sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # dropped while we were still sending
        except TimeoutError:
            raise AssertionError(f"the master stopped reading a {len(payload)}-byte request and kept it open") from None
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"a {len(payload)}-byte request was neither answered nor dropped in 5 s") from None


def test_master_survives_malformed_control_requests(start_server, tmp_path):
    server, path = start_controlled(start_server, tmp_path)
    monitor = Monitor(path)
    rng = random.Random(7)
    try:
        requests = [
            b"[" * 100000 + b"]" * 100000 + b"\n",  # deeply nested, long
            b"[" * 2000 + b"]" * 2000 + b"\n",  # deeply nested, short enough for any length limit
            b'{"command": ' * 1500 + b"1" + b"}" * 1500 + b"\n",
            b'{"command": "workers", "x": "' + b"y" * (6 * 1024 * 1024),  # several MB, no newline
            bytes(rng.getrandbits(8) for _ in range(65536)),  # binary garbage
            bytes(rng.getrandbits(8) for _ in range(300)) + b"\n",
            b"\xff\xfe{}\n",
            b'{"command": ["workers"]}\n',
            b'{"command": "close", "uuid": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
        ]
        for payload in requests:
            abuse(server, path, payload)
            assert_alive(server)
        abuse(server, path, bytes(rng.getrandbits(8) for _ in range(1000)), half_close=False)  # garbage, then silence
        assert_alive(server)
        assert len(ask_workers(server, path)["workers"]) == 1
    finally:
        monitor.stop()
    monitor.check()
    echo_works(server.address("echo"))


def test_a_trickling_control_client_blocks_neither_requests_nor_stop(start_server, tmp_path):
    server, path = start_controlled(start_server, tmp_path)
    trickler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    trickler.connect(path)
    done = threading.Event()

    def trickle() -> None:  # one byte a second, never a whole line
        try:
            for byte in b'{"command": "workers"' * 10:
                trickler.send(bytes([byte]))
                if done.wait(1.0):
                    return
        except OSError:
            pass  # the master dropped us: fine

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        monitor = Monitor(path)
        try:
            time.sleep(5)  # the trickle goes on while the monitor asks every 0.2 s
        finally:
            monitor.stop()
        monitor.check()
        assert_alive(server)
        # The master may have dropped the first trickler by now (after 2 s); this one has
        # just begun its request when TERM arrives.
        with connect_control(path) as fresh:
            fresh.send(b"{")
            time.sleep(0.2)
            server.send_signal(signal.SIGTERM)
            try:
                code = server.proc.wait(10)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"SIGTERM did not stop the master within 10 s:\n{server.log}") from None
        assert code == 0, server.log
    finally:
        done.set()
        thread.join(5)
        trickler.close()


# -- B.5 HUP with a config of the wrong shape ---------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    ["tcp = 1\n", "[tcp]\nservers = 3\n", "[tcp]\npool = 5\n", "[tcp.servers\naddr = \n"],
    ids=["tcp-not-a-table", "servers-not-a-table", "pool-not-a-table", "invalid-toml"],
)
def test_hup_with_a_config_of_the_wrong_shape_keeps_serving(start_server, tmp_path, broken):
    server = start(start_server, servers_config("echo"), workers=2)  # -w 2 overrides tcp.pool.num_workers
    address = server.address("echo")
    before = Client(address, timeout=15)
    uuid = uuid_of(before)
    (tmp_path / "server.toml").write_text(broken)
    server.send_signal(signal.SIGHUP)
    server.wait_log(r"config not reloaded", timeout=15)
    assert_alive(server)
    before.send(b"still\r\n")
    assert before.line() == b"still\r\n"
    assert uuid_of(before) == uuid
    echo_works(address)
    assert_alive(server)
    before.close()


# -- B.6 a flood of TTIN ---------------------------------------------------------------------------------


def test_a_flood_of_ttin_is_bounded(start_server, tmp_path):
    server, path = start_controlled(start_server, tmp_path)
    marker = len(server.lines)

    def bounded() -> None:
        assert_alive(server)
        count = len(server.worker_pids())
        assert count <= 256, f"{count} workers after a flood of SIGTTIN"

    def delivered() -> bool:
        """Whether the last SIGTTIN reached the master (the kernel merges a pending one with the next)."""
        bounded()
        with open(f"/proc/{server.proc.pid}/status") as fh:
            pending = sum(int(line.split()[1], 16) for line in fh if line.startswith(("SigPnd:", "ShdPnd:")))
        return not pending & (1 << (signal.SIGTTIN - 1))

    for _ in range(400):
        server.send_signal(signal.SIGTTIN)
        wait_for(delivered, timeout=10, what="the master to take the SIGTTIN")

    def warned() -> bool:
        bounded()
        return any(re.search(r"\[(WARNING|ERROR)\]", line) for line in server.lines[marker:])

    wait_for(warned, timeout=20, what="a warning about the flood")
    reply = ask_workers(server, path, timeout=20)
    assert 1 <= len(reply["workers"]) <= 256
    bounded()
    echo_works(server.address("echo"))
    assert_alive(server)


# -- B.7 commands to a busy worker are never dropped -----------------------------------------------------


def test_commands_to_a_busy_worker_are_never_dropped(start_server, tmp_path):
    server, path = start_controlled(start_server, tmp_path, '[tcp.pool]\ndestroy_timeout = "60s"\n', workers=2)
    address = server.address("echo")
    busy = Client(address, timeout=30)
    busy_uuid = uuid_of(busy)
    busy_pid = answering_pid(busy)
    others = [Client(address, timeout=30) for _ in range(6)]
    on_busy = [c for c in others if answering_pid(c) == busy_pid]  # more connections of that worker
    on_busy_uuids = [uuid_of(c) for c in on_busy]
    busy.send(b"sleep 10\r\n")
    wait_for(lambda: any(e["body"] == "sleep 10\r\n" for e in server.events_of(busy_uuid)), what="the long event")
    sleeping_since = time.monotonic()
    # Each close request makes the master write a command to every worker's channel; the
    # sleeping worker reads none of them, so its channel overflows. (A master that limits
    # its management clients may refuse some of them: that is allowed.)
    for _ in range(600):
        with connect_control(path) as sock:
            try:
                sock.sendall(json.dumps({"command": "close", "uuid": str(uuids.uuid4())}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused
    assert_alive(server)
    (idle_pid,) = set(server.worker_pids()) - {busy_pid}
    server.send_signal(signal.SIGTERM)
    wait_for(lambda: idle_pid not in server.worker_pids(), timeout=10, what="the idle worker to stop")
    assert time.monotonic() - sleeping_since < 8, "too slow to test: the long event was nearly over before TERM"
    late = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    late.settimeout(2)
    late_address = None
    try:
        late.connect(address)  # only the sleeping worker still holds a listening socket
        host, port = late.getsockname()[:2]
        late_address = f"{host}:{port}"
        late.sendall(b"late\r\n")
    except OSError:
        pass  # refused: nobody listens any more, fine
    try:
        code = server.proc.wait(25)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit within 25 s of SIGTERM:\n{server.log}") from None
    assert code == 0, server.log
    assert "did not stop in time" not in server.log, server.log
    assert closed_by_server(busy) == b"sleep 10\r\n"  # the event finished, its answer was written
    for uuid in [busy_uuid, *on_busy_uuids]:
        assert kinds(server.events_of(uuid))[-1] == "CLOSE", server.events_of(uuid)
    if late_address is not None:
        late_events = [e for e in server.events() if e["remote"] == late_address]
        assert not late_events, f"the busy worker (pid {busy_pid}) accepted a connection after TERM: {late_events}"
    late.close()
    for client in [busy, *others]:
        client.close()


def test_a_stop_queued_behind_a_flood_of_handoffs_is_not_dropped(start_server, tmp_path):
    """The same promise, with the channel filled by connections handed over to a busy worker."""
    server, path = start_controlled(start_server, tmp_path, '[tcp.pool]\ndestroy_timeout = "60s"\n', workers=2)
    address = server.address("echo")
    ids = {row["pid"]: row["id"] for row in ask_workers(server, path)["workers"]}
    busy_pid = max(ids, key=ids.get)  # TTOU retires the other one, the oldest
    clients = []
    busy = None
    while busy is None:
        client = Client(address, timeout=30)
        clients.append(client)
        if answering_pid(client) == busy_pid:
            busy = client
    busy_uuid = uuid_of(busy)
    busy.send(b"sleep 10\r\n")
    wait_for(lambda: any(e["body"] == "sleep 10\r\n" for e in server.events_of(busy_uuid)), what="the long event")
    sleeping_since = time.monotonic()
    crowd = []
    for _ in range(300):  # all on the other worker: the sleeping one accepts nothing
        client = Client(address, timeout=30)
        crowd.append(client)
        client.send(b"x\r\n")
    for client in crowd:
        assert client.line() == b"x\r\n"
    server.send_signal(signal.SIGTTOU)  # the idle worker hands 300 connections to the sleeping one
    server.wait_log(r"SIGTTOU")
    wait_for(lambda: len(server.worker_pids()) == 1, timeout=15, what="the other worker to hand over and exit")
    assert server.worker_pids() == [busy_pid]
    server.send_signal(signal.SIGTERM)
    assert time.monotonic() - sleeping_since < 8, "too slow to test: the long event was nearly over before TERM"
    try:
        code = server.proc.wait(25)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit within 25 s of SIGTERM:\n{server.log}") from None
    assert code == 0, server.log
    assert "did not stop in time" not in server.log, server.log
    assert closed_by_server(busy) == b"sleep 10\r\n"
    assert kinds(server.events_of(busy_uuid))[-1] == "CLOSE"
    for client in clients + crowd:
        client.close()


# -- B.8 a worker writing garbage on its channel ------------------------------------------------------------


def clients_on_two_workers(address) -> tuple[tuple[Client, int], tuple[Client, int], list[Client]]:
    """Connect until two clients are served by different workers; return them and the extras."""
    by_pid: dict[int, Client] = {}
    extras: list[Client] = []

    def more() -> bool:
        client = Client(address, timeout=15)
        pid = answering_pid(client)
        if pid in by_pid:
            extras.append(client)
        else:
            by_pid[pid] = client
        return len(by_pid) == 2

    wait_for(more, what="clients on both workers")
    (pid_a, a), (pid_b, b) = sorted(by_pid.items())
    return (a, pid_a), (b, pid_b), extras


def test_a_worker_writing_garbage_on_its_channel_is_replaced(start_server):
    server = start(start_server, servers_config("echo", app="faulty_apps:garbage_channel"), workers=2)
    address = server.address("echo")
    (bad, bad_pid), (good, good_pid), extras = clients_on_two_workers(address)
    bad.send(b"garbage\r\n")

    def replaced() -> bool:
        assert_alive(server)
        pids = server.worker_pids()
        return bad_pid not in pids and len(pids) == 2

    wait_for(replaced, what="the garbage writer to be replaced")
    closed_by_server(bad)
    assert answering_pid(good) == good_pid
    assert any(str(bad_pid) in line and re.search(r"\[(WARNING|ERROR)\]", line) for line in server.lines), server.log
    echo_works(address)
    assert_alive(server)
    for client in [bad, good, *extras]:
        client.close()


# -- B.9 a worker trampling the shared scoreboard -----------------------------------------------------------


def test_a_worker_scribbling_on_the_scoreboard_does_not_kill_the_master(start_server, tmp_path):
    config = servers_config("echo", app="faulty_apps:scribble_scoreboard", extra='[control]\nsocket = "ctl.sock"\n' + FAST_TICK)
    server = start(start_server, config, workers=2)
    path = str(tmp_path / "ctl.sock")
    wait_for(lambda: os.path.exists(path), what="the control socket")
    address = server.address("echo")
    with Client(address, timeout=15) as vandal:
        vandal.send(b"scribble\r\n")
        assert vandal.line() == b"scribbled\r\n"

    def served() -> bool:
        """A client is served (a connection may be lost while the master replaces a worker)."""
        assert_alive(server)
        try:
            echo_works(address)
        except (ConnectionError, TimeoutError):
            return False
        return True

    end = time.monotonic() + 2.0  # twenty watch ticks
    while time.monotonic() < end:
        assert_alive(server)
        ask_workers(server, path)
        wait_for(served, timeout=15, what="a client to be served")
        time.sleep(0.1)
    assert_alive(server)


# -- B.10 the control socket of a live master ---------------------------------------------------------------


def test_a_second_master_does_not_steal_a_live_control_socket(start_server, tmp_path):
    path = tmp_path / "ctl.sock"
    config = servers_config("echo", extra=f'[control]\nsocket = "{path}"\n')
    first = start(start_server, config)
    wait_for(path.exists, what="the control socket")
    second = start_server(config, workers=1, ready=False)  # another free port, the same control socket

    def exited() -> bool:
        return second.proc.poll() is not None

    try:
        wait_for(exited, timeout=30, what="the second master to give up")
    except AssertionError:
        raise AssertionError(f"the second master is still running:\n{second.log}") from None
    assert second.proc.returncode != 0
    named = [line for line in second.lines if "ctl.sock" in line and "control socket at" not in line]
    assert named, f"no error names the control socket:\n{second.log}"
    reply, _ = control(str(path), {"command": "workers"})
    assert reply["ok"]
    assert sorted(row["pid"] for row in reply["workers"]) == first.worker_pids()
    assert_alive(first)
