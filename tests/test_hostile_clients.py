"""Clients that attack the server: never reading, never finishing, never talking, too many,
forging log lines, sending one endless message (SPEC §2 limits and timeouts, §6)."""

from __future__ import annotations

import os
import select
import shutil
import socket
import tempfile
import threading
import time

import psutil
from harness import Client, kinds, servers_config, start, uuid_of, wait_for

MB = 1024 * 1024
#: What a forged log line would start with (the text format: "[time] [pid] [LEVEL] message").
FORGED = "[2026-01-01 00:00:00 +0000] [1] [INFO] forged"


def small_window_client(address: tuple[str, int], timeout: float = 30.0) -> Client:
    """A client whose receive buffer is set small before connecting (a small TCP window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(timeout)
    sock.connect(address)
    client = Client.__new__(Client)
    client.sock, client.buf = sock, b""
    return client


def closed_now(client: Client) -> bool:
    """Whether the server has closed the connection (EOF waiting), without blocking."""
    readable, _, _ = select.select([client.sock], [], [], 0)
    if not readable:
        return False
    data = client.sock.recv(65536, socket.MSG_PEEK)
    if data:
        raise AssertionError(f"unexpected bytes from the server: {data[:80]!r}")
    return True


def timeout_warnings(server, uuid: str, which: str) -> list[str]:
    return [line for line in list(server.lines) if uuid in line and which in line]


def assert_timeout_warning(server, uuid: str, which: str, name: str, remote: str) -> None:
    """Exactly one warning names the connection and the timeout, with server and remote."""
    server.wait_log(rf"{uuid}.*{which}|{which}.*{uuid}")
    lines = timeout_warnings(server, uuid, which)
    assert len(lines) == 1, lines
    (line,) = lines
    assert "WARNING" in line and name in line and remote in line, line


def assert_untouched(server, uuid: str) -> None:
    """The connection got no CLOSE and no log line names it."""
    assert "CLOSE" not in kinds(server.events_of(uuid)), server.events_of(uuid)
    named = [line for line in list(server.lines) if uuid in line]
    assert not named, named


def local_address(client: Client) -> str:
    host, port = client.sock.getsockname()[:2]
    return f"{host}:{port}"


# -- A.1 a client that keeps sending and never reads ---------------------------------------


def test_a_sender_that_never_reads_costs_bounded_memory_and_stalls_nobody(start_server):
    server = start(start_server, servers_config("echo"))
    (pid,) = server.worker_pids()
    worker = psutil.Process(pid)
    address = server.address("echo")
    other = Client(address, timeout=10)
    for i in range(20):  # warm up: the baseline includes a served connection
        other.send(b"warm %d\r\n" % i)
        assert other.line() == b"warm %d\r\n" % i
    baseline = worker.memory_info().rss

    hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    hog.connect(address)
    hog.setblocking(False)
    chunk = (b"x" * 1022 + b"\r\n") * 64  # 64 echo requests of 1 KB
    stop = threading.Event()
    sent = [0]
    failures: list[BaseException] = []

    def flood() -> None:
        pending = memoryview(chunk)
        try:
            while not stop.is_set():
                try:
                    n = hog.send(pending)
                except BlockingIOError:
                    select.select([], [hog], [], 0.05)
                    continue
                sent[0] += n
                pending = pending[n:] or memoryview(chunk)
        except OSError as exc:
            failures.append(exc)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    peak = baseline
    round_trips: list[float] = []
    try:
        end = time.monotonic() + 3.0
        i = 0
        while time.monotonic() < end:
            started = time.monotonic()
            other.send(b"ping %d\r\n" % i)
            assert other.line() == b"ping %d\r\n" % i
            round_trips.append(time.monotonic() - started)
            peak = max(peak, worker.memory_info().rss)
            if peak - baseline > 64 * MB:
                break  # far over the bound already: spare the machine
            i += 1
            time.sleep(0.02)
        peak = max(peak, worker.memory_info().rss)
    finally:
        stop.set()
        flooder.join(10)
    assert not failures, f"the server broke the flooding connection: {failures}"
    assert sent[0] > MB, f"the flood sent only {sent[0]} bytes"  # past the 1 MiB high-water mark
    assert max(round_trips) < 2.0, f"slowest round trip beside the flood: {max(round_trips):.2f}s"
    grown = peak - baseline
    assert grown <= 16 * MB, (
        f"the worker grew by {grown / MB:.1f} MB while a client sent {sent[0] / MB:.1f} MB of requests without reading an answer"
    )
    hog.close()
    other.close()


# -- A.2 idle_timeout --------------------------------------------------------------------------


def test_idle_timeout_closes_a_silent_connection_and_spares_an_active_one(start_server):
    server = start(start_server, servers_config("idler", idler='idle_timeout = "1s"'))
    address = server.address("idler")
    silent = Client(address, timeout=10)
    silent_uuid = uuid_of(silent)
    quiet_since = time.monotonic()
    active = Client(address, timeout=10)
    active_uuid = uuid_of(active)
    closed_after = None
    end = time.monotonic() + 3.0
    i = 0
    while time.monotonic() < end:
        active.send(b"tick %d\r\n" % i)
        assert active.line() == b"tick %d\r\n" % i
        if closed_after is None and closed_now(silent):
            closed_after = time.monotonic() - quiet_since
        i += 1
        time.sleep(0.3)
    if closed_after is None:
        assert silent.read_to_eof() == b""
        closed_after = time.monotonic() - quiet_since
    assert 0.9 <= closed_after <= 6.0, f"the silent connection was closed {closed_after:.2f}s after its last answer"
    assert silent.read_to_eof() == b""  # EOF, not a reset
    assert kinds(server.wait_events(silent_uuid, timeout=10)) == ["CONNECTED", "DATA", "CLOSE"]
    assert_timeout_warning(server, silent_uuid, "idle_timeout", "idler", local_address(silent))
    # The connection talking every 300 ms is left alone.
    active.send(b"still\r\n")
    assert active.line() == b"still\r\n"
    assert_untouched(server, active_uuid)
    silent.close()
    active.close()


# -- A.3 read_timeout ---------------------------------------------------------------------------

READ_TIMEOUT_SERVERS = servers_config("lines", "stream", lines='read_timeout = "1s"', stream='delimiter = ""\nread_timeout = "1s"')


def test_read_timeout_closes_a_connection_whose_message_never_completes(start_server):
    server = start(start_server, READ_TIMEOUT_SERVERS)
    with Client(server.address("lines"), timeout=10) as client:
        uuid = uuid_of(client)
        client.send(b"abc")
        started = time.monotonic()
        assert client.read_to_eof() == b""
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed <= 6.0, f"closed {elapsed:.2f}s after the message started"
        remote = local_address(client)
    assert kinds(server.wait_events(uuid, timeout=10)) == ["CONNECTED", "DATA", "CLOSE"]
    assert_timeout_warning(server, uuid, "read_timeout", "lines", remote)


def test_read_timeout_spares_messages_that_complete_in_time_and_stream_mode(start_server):
    server = start(start_server, READ_TIMEOUT_SERVERS)
    steady = Client(server.address("lines"), timeout=10)
    steady_uuid = uuid_of(steady)
    stream = Client(server.address("stream"), timeout=10)
    stream_uuid = uuid_of(stream)
    stream.send(b"abc")  # stream mode: a chunk is a message, nothing is ever pending
    assert stream.read_exactly(3) == b"abc"
    # A partial message is always pending on `steady`, but each one completes within 300 ms.
    steady.send(b"abc")
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        time.sleep(0.3)
        steady.send(b"x\r\nabc")
        assert steady.line() == b"abcx\r\n"
    steady.send(b"x\r\n")
    assert steady.line() == b"abcx\r\n"
    stream.send(b"ping")
    assert stream.read_exactly(4) == b"ping"
    assert_untouched(server, steady_uuid)
    assert_untouched(server, stream_uuid)
    steady.close()
    stream.close()


# -- A.4 write_timeout --------------------------------------------------------------------------


def test_write_timeout_closes_a_client_that_never_reads(start_server):
    server = start(start_server, servers_config("big", big='write_timeout = "1s"'))
    client = small_window_client(server.address("big"), timeout=10)
    uuid = uuid_of(client)
    client.send(b"big 50000000\r\n")
    wait_for(lambda: any(e["body"] == "big 50000000\r\n" for e in server.events_of(uuid)), what="the big request")
    asked = time.monotonic()
    events = server.wait_events(uuid, timeout=15)
    elapsed = time.monotonic() - asked
    assert kinds(events) == ["CONNECTED", "DATA", "DATA", "CLOSE"]
    assert elapsed <= 10.0, f"closed {elapsed:.1f}s after the answer was queued"
    assert_timeout_warning(server, uuid, "write_timeout", "big", local_address(client))
    received = len(client.buf)
    try:
        while chunk := client.sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    assert received < 50000002, "the whole answer arrived: the connection was not cut short"
    client.close()


def test_write_timeout_spares_a_slow_but_steady_reader(start_server):
    server = start(start_server, servers_config("big", big='write_timeout = "1s"'))
    client = small_window_client(server.address("big"), timeout=10)
    uuid = uuid_of(client)
    size = 20_000_000
    client.send(b"big %d\r\n" % size)
    received = 0
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # 64 KB every 200 ms: slow, but never stalled for a second
        received += len(client.read_exactly(65536))
        time.sleep(0.2)
    rest = client.read_exactly(size + 2 - received)
    assert rest.endswith(b"x\r\n") and rest.count(b"x") == len(rest) - 2
    assert_untouched(server, uuid)
    client.send(b"after\r\n")
    assert client.line() == b"after\r\n"
    client.close()


# -- A.5 max_connections ----------------------------------------------------------------------


def test_max_connections_makes_further_clients_wait_until_one_closes(start_server):
    server = start(start_server, servers_config("echo", extra="[tcp.pool]\nmax_connections = 2\n"))
    address = server.address("echo")
    first, second = Client(address, timeout=10), Client(address, timeout=10)
    first_uuid = uuid_of(first)
    uuid_of(second)
    third = Client(address, timeout=10)  # the kernel completes the handshake (backlog)
    third.send(b"uuid\r\n")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # nothing may happen for a second: poll that it doesn't
        connected = kinds(server.events()).count("CONNECTED")
        assert connected == 2, f"{connected} CONNECTED events with max_connections = 2"
        time.sleep(0.05)
    first.close()
    third_uuid = third.line().decode().strip()  # served once a slot is free
    events = server.events()
    order = [(e["event"], e["uuid"]) for e in events]
    assert order.index(("CLOSE", first_uuid)) < order.index(("CONNECTED", third_uuid)), order
    second.send(b"x\r\n")
    assert second.line() == b"x\r\n"
    third.send(b"y\r\n")
    assert third.line() == b"y\r\n"
    second.close()
    third.close()


# -- A.6 log forging ---------------------------------------------------------------------------


def assert_not_forged(server) -> None:
    server.wait_log("forged")  # the text reached the log, one way or another
    forged = [line for line in list(server.lines) if line.startswith(FORGED)]
    assert not forged, f"a client forged a log line:\n{server.log}"


def test_an_error_message_from_a_client_cannot_forge_a_log_line(start_server):
    server = start(start_server, servers_config("echo"))
    with Client(server.address("echo"), timeout=10) as client:
        client.send(b"errormsg oops\\n" + FORGED.encode() + b"\r\n")
        assert client.read_to_eof() == b""  # error() closes the connection
    server.wait_log(r"\[ERROR\].*oops")
    assert_not_forged(server)


def test_a_unix_peer_name_cannot_forge_a_log_line(start_server, tmp_path):
    path = tmp_path / "u.sock"
    server = start(start_server, servers_config(extra=f'[tcp.servers.local]\naddr = "unix://{path}"\nmax_message_size = 16\n'))
    short = tempfile.mkdtemp(prefix="pt", dir="/tmp")  # a peer name must fit in sun_path
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(short, "c\n" + FORGED))
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"y" * 100)  # over max_message_size: the warning names the remote
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        sock.close()
        server.wait_log("max_message_size")
        assert_not_forged(server)
    finally:
        shutil.rmtree(short, ignore_errors=True)


# -- A.7 one endless message ----------------------------------------------------------------------


def test_a_giant_unterminated_message_closes_the_connection_in_bounded_memory(start_server):
    server = start(start_server, servers_config("echo"))
    (pid,) = server.worker_pids()
    worker = psutil.Process(pid)
    client = Client(server.address("echo"), timeout=10)
    uuid = uuid_of(client)
    baseline = peak = worker.memory_info().rss
    client.sock.setblocking(False)
    payload = memoryview(b"y" * (8 * MB))  # no delimiter, 8 times max_message_size
    sent = 0
    closed = False
    deadline = time.monotonic() + 20
    while sent < len(payload) and time.monotonic() < deadline:
        peak = max(peak, worker.memory_info().rss)
        try:
            sent += client.sock.send(payload[sent : sent + 65536])
        except BlockingIOError:
            select.select([], [client.sock], [], 0.05)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    client.sock.settimeout(10)
    if not closed:
        try:
            assert client.read_to_eof() == b""
        except ConnectionResetError:
            pass
    assert sent > MB, f"closed after only {sent} bytes"
    events = server.wait_events(uuid, timeout=10)
    peak = max(peak, worker.memory_info().rss)
    assert kinds(events) == ["CONNECTED", "DATA", "CLOSE"]
    server.wait_log(rf"{uuid}.*max_message_size")
    grown = peak - baseline
    assert grown <= 8 * MB, f"the worker grew by {grown / MB:.1f} MB for one oversized message"
    client.close()


def test_many_unfinished_messages_are_bounded_for_the_whole_worker(start_server):
    """Each connection stays under max_message_size, but together they would park 90 MB:
    the worker closes the largest once its unfinished messages pass 32 MiB."""
    server = start(start_server, servers_config("echo"))
    (pid,) = server.worker_pids()
    worker = psutil.Process(pid)
    good = Client(server.address("echo"), timeout=10)
    assert good.send(b"hi\r\n") is None and good.line() == b"hi\r\n"
    before = worker.memory_info().rss
    parkers = []
    for _ in range(100):
        sock = socket.create_connection(server.address("echo"), timeout=10)
        sock.sendall(b"p" * 900_000)  # under the 1 MiB limit, no delimiter
        parkers.append(sock)
    server.wait_log(r"unfinished message \(\d+ KiB\) is the largest while this worker holds more than 32 MiB")
    wait_for(lambda: server.log.count("is the largest while this worker") >= 50, what="the largest to be closed")
    growth = worker.memory_info().rss - before
    assert growth < 64 * MB, f"the worker grew by {growth / MB:.0f} MB"
    good.send(b"still\r\n")
    assert good.line() == b"still\r\n"
    for sock in parkers:
        sock.close()
    good.close()
