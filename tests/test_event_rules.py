"""SPEC §2, probed from real clients against a real ``prefork-tcp serve``."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psutil
import pytest
from harness import Client, kinds, servers_config, wait_for


def bodies(events: list[dict]) -> list[str]:
    return [e["body"] for e in events if e["event"] == "DATA"]


def test_connected_comes_first_before_any_byte_is_sent(start_server):
    server = start_server(servers_config("greet"))
    with Client(server.address("greet")) as client:
        hello = client.line()
        uuid = hello.decode().split()[1]
        local = client.sock.getsockname()
    events = server.wait_events(uuid)
    assert kinds(events) == ["CONNECTED", "CLOSE"]
    assert events[0]["body"] == ""
    assert events[0]["server"] == "greet"
    assert events[0]["remote"] == f"{local[0]}:{local[1]}"
    assert len(uuid) == 36 and uuid[14] == "4"  # UUID4 text


def test_pipelined_messages_are_separate_events_in_order(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"a\r\nbb\r\nccc\r\n")
        assert client.read_exactly(12) == b"a\r\nbb\r\nccc\r\n"
        client.send(b"uuid\r\n")
        uuid = client.line().decode().strip()
    events = server.wait_events(uuid)
    assert kinds(events) == ["CONNECTED", "DATA", "DATA", "DATA", "DATA", "CLOSE"]
    assert bodies(events) == ["a\r\n", "bb\r\n", "ccc\r\n", "uuid\r\n"]


def test_message_and_delimiter_split_over_many_reads_is_one_event(start_server):
    server = start_server(servers_config("echo", echo='delimiter = "<END>"'))
    with Client(server.address("echo")) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in [b"hel", b"lo<E", b"N", b"D>wor", b"ld<END><EN", b"D>"]:
            client.send(piece)
            time.sleep(0.02)  # encourage separate reads; the result must not depend on them
        assert client.read_until(b"<END><END>") == b"hello<END>world<END><END>"
    wait_for(lambda: "CLOSE" in kinds(server.events()), what="CLOSE")
    assert bodies(server.events()) == ["hello<END>", "world<END>", "<END>"]


def test_a_fragment_one_byte_shorter_than_the_delimiter_is_not_a_message(start_server):
    # A read as long as the delimiter minus one, without it, once passed for a whole message.
    server = start_server(servers_config("crlf", "end", end='delimiter = "<END>"'))
    for name, pieces, message in [("crlf", [b"a", b"b\r\n"], b"ab\r\n"), ("end", [b"abcd", b"<END>"], b"abcd<END>")]:
        with Client(server.address(name)) as client:
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in pieces:
                client.send(piece)
                time.sleep(0.05)  # encourage separate reads; the result must not depend on them
            assert client.read_exactly(len(message)) == message
    wait_for(lambda: kinds(server.events()).count("CLOSE") == 2, what="two CLOSE events")
    assert bodies(server.events()) == ["ab\r\n", "abcd<END>"]


def test_stream_mode_delivers_chunks_as_read(start_server):
    server = start_server(servers_config("raw", raw='delimiter = ""'))
    payload = bytes(range(256)) * 64
    with Client(server.address("raw")) as client:
        client.send(payload)
        assert client.read_exactly(len(payload)) == payload
    wait_for(lambda: "CLOSE" in kinds(server.events()), what="CLOSE")
    events = server.events()
    assert "".join(bodies(events)).encode("latin-1") == payload
    assert kinds(events)[0] == "CONNECTED" and kinds(events)[-1] == "CLOSE"


def test_message_over_max_message_size_closes_only_that_connection(start_server):
    server = start_server(servers_config("small", small="max_message_size = 16"))
    with Client(server.address("small")) as bystander, Client(server.address("small")) as client:
        bystander.send(b"0123456789abcdef\r\n")  # exactly the limit: fine
        assert bystander.line() == b"0123456789abcdef\r\n"
        client.send(b"y" * 100)
        assert client.read_to_eof() == b""
        bystander.send(b"still here\r\n")
        assert bystander.line() == b"still here\r\n"
    line = server.wait_log("closing connection .* exceeds max_message_size 16")[0]
    uuid = line.split("closing connection ")[1].split()[0]
    assert "server small" in line and "remote 127.0.0.1:" in line
    assert kinds(server.wait_events(uuid)) == ["CONNECTED", "CLOSE"]


def test_half_close_answers_buffered_and_partial_messages_then_closes(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"one\r\ntwo\r\npartial")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.read_to_eof() == b"one\r\ntwo\r\npartial"
    wait_for(lambda: "CLOSE" in kinds(server.events()), what="CLOSE")
    events = server.events()
    assert kinds(events) == ["CONNECTED", "DATA", "DATA", "DATA", "CLOSE"]
    assert bodies(events) == ["one\r\n", "two\r\n", "partial"]


def test_bytes_sent_before_connected_is_answered_are_kept(start_server):
    server = start_server(servers_config("slow"))
    with Client(server.address("slow")) as client:
        client.send(b"early\r\nbird\r\n")
        assert client.read_exactly(13) == b"early\r\nbird\r\n"
    wait_for(lambda: "CLOSE" in kinds(server.events()), what="CLOSE")
    assert bodies(server.events()) == ["early\r\n", "bird\r\n"]


def test_respond_close_writes_then_closes_gracefully_dropping_later_messages(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"before\r\nbye\r\nafter\r\n")
        assert client.read_to_eof() == b"before\r\nbye\r\n"  # FIN, not RST
    wait_for(lambda: "CLOSE" in kinds(server.events()), what="CLOSE")
    events = server.events()
    assert kinds(events) == ["CONNECTED", "DATA", "DATA", "CLOSE"]
    assert bodies(events) == ["before\r\n", "bye\r\n"]


def test_respond_close_flushes_a_large_body_completely(start_server):
    server = start_server(servers_config("echo"))
    size = 8 * 1024 * 1024
    with Client(server.address("echo")) as client:
        client.send(f"bigbye {size}\r\n".encode())
        time.sleep(0.2)  # let the kernel buffers fill so the server must wait for this reader
        data = client.read_to_eof()
    assert len(data) == size + 2 and data.endswith(b"x\r\n")


@pytest.mark.parametrize("command", [b"close", b"noanswer", b"error"])
def test_close_answers_close_without_writing_and_deliver_close_once(start_server, command):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"uuid\r\n")
        uuid = client.line().decode().strip()
        client.send(command + b"\r\nnever\r\n")
        assert client.read_to_eof() == b""
    events = server.wait_events(uuid)
    assert kinds(events) == ["CONNECTED", "DATA", "DATA", "CLOSE"]
    assert server.stop() == 0  # every event there will ever be is written now
    assert kinds(server.events_of(uuid)).count("CLOSE") == 1
    if command == b"error":
        line = next(line for line in server.lines if "application error" in line)
        pid = events[0]["pid"]
        assert f"worker {pid}" in line and "server echo" in line and uuid in line
        assert events[0]["remote"] in line and "the client asked for an error" in line


def test_answering_twice_raises_runtime_error_naming_the_request(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"twice\r\nuuid\r\n")
        assert client.line() == b"first\r\n"
        uuid = client.line().decode().strip()
    notes = [e["note"] for e in server.wait_events(uuid) if "note" in e]
    assert notes == [f"RuntimeError: request DATA of connection {uuid} was already answered"]


def test_respond_type_rules(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as client:
        client.send(b"badtype\r\nstr\r\n")
        assert client.line() == b"TypeError: body must be bytes or str, got int\r\n"
        assert client.line() == "naïve\r\n".encode()


def test_connected_answered_with_close_rejects_the_client(start_server):
    server = start_server(servers_config("reject"))
    with Client(server.address("reject")) as client:
        client.send(b"ignored\r\n")
        assert client.read_to_eof() == b""
    wait_for(lambda: "CLOSE" in kinds(server.events()), what="CLOSE")
    assert kinds(server.events()) == ["CONNECTED", "CLOSE"]


def test_client_reset_delivers_close_and_spares_the_others(start_server):
    server = start_server(servers_config("echo"))
    with Client(server.address("echo")) as bystander:
        client = Client(server.address("echo"))
        client.send(b"uuid\r\n")
        uuid = client.line().decode().strip()
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        assert kinds(server.wait_events(uuid)) == ["CONNECTED", "DATA", "CLOSE"]
        bystander.send(b"ok\r\n")
        assert bystander.line() == b"ok\r\n"


def test_slow_reader_costs_bounded_memory_and_stalls_nobody(start_server):
    server = start_server(servers_config("echo"), workers=1)
    worker = psutil.Process(server.worker_pids()[0])
    baseline = worker.memory_info().rss
    hog = Client(server.address("echo"))
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    requests = 64
    hog.send(b"big 1000000\r\n" * requests)  # 64 MB of answers nobody reads yet
    with Client(server.address("echo")) as other:
        for i in range(20):
            other.send(b"ping %d\r\n" % i)
            assert other.line() == b"ping %d\r\n" % i
    grown = worker.memory_info().rss - baseline
    assert grown < 24 * 1024 * 1024, f"worker grew {grown} bytes for one slow reader"
    total = requests * 1000002
    assert len(hog.read_exactly(total)) == total  # nothing lost once it reads
    hog.close()


def test_hundred_round_trips_on_parallel_connections(start_server):
    server = start_server(servers_config("echo"))
    address = server.address("echo")
    errors: list[BaseException] = []

    def talk(n: int) -> None:
        try:
            with Client(address) as client:
                for i in range(100):
                    message = b"client %d message %d\r\n" % (n, i)
                    client.send(message)
                    assert client.line() == message
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    wait_for(lambda: kinds(server.events()).count("CLOSE") == 20, what="20 CLOSE events")
    events = server.events()
    assert kinds(events).count("CONNECTED") == 20 and kinds(events).count("DATA") == 2000
    by_uuid: dict[str, set[int]] = {}
    for e in events:
        by_uuid.setdefault(e["uuid"], set()).add(e["pid"])
    assert all(len(pids) == 1 for pids in by_uuid.values()), "a connection's events went to two workers"


def test_multiple_servers_with_their_own_delimiters(start_server):
    config = servers_config("lines", "dots", dots='delimiter = "."')
    server = start_server(config)
    with Client(server.address("lines")) as a, Client(server.address("dots")) as b:
        a.send(b"x.y\r\n")
        b.send(b"x.y.")
        assert a.line() == b"x.y\r\n"
        assert b.read_exactly(4) == b"x.y."
    wait_for(lambda: kinds(server.events()).count("CLOSE") == 2, what="2 CLOSE events")
    assert sorted((e["server"], e["body"]) for e in server.events() if e["event"] == "DATA") == [
        ("dots", "x."),
        ("dots", "y."),
        ("lines", "x.y\r\n"),
    ]


def test_unix_and_ipv6_servers(start_server, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    path = tmp_path / "app.sock"
    config = servers_config(extra=f'[tcp.servers.local]\naddr = "unix://{path}"\n[tcp.servers.six]\naddr = "tcp://[::1]:0"\n')
    server = start_server(config)
    with Client(server.address("local")) as a, Client(server.address("six")) as b:
        a.send(b"hi\r\n")
        b.send(b"hi\r\n")
        assert a.line() == b.line() == b"hi\r\n"
        six_local = b.sock.getsockname()
    wait_for(lambda: kinds(server.events()).count("CLOSE") == 2, what="2 CLOSE events")
    remotes = {e["server"]: e["remote"] for e in server.events()}
    assert remotes == {"local": "", "six": f"[::1]:{six_local[1]}"}
    assert server.stop() == 0
    assert not path.exists()


def test_a_thousand_concurrent_connections(start_server):
    server = start_server(servers_config("echo"))
    address = server.address("echo")
    clients = [Client(address) for _ in range(1000)]
    try:
        for i, client in enumerate(clients):
            client.send(b"%d\r\n" % i)
        for i, client in enumerate(clients):
            assert client.line() == b"%d\r\n" % i
    finally:
        for client in clients:
            client.close()
    wait_for(lambda: kinds(server.events()).count("CLOSE") == 1000, what="1000 CLOSE events")
    pids = {e["pid"] for e in server.events()}
    assert len(pids) == 2, "both workers accept connections"


def test_sequential_connections_reach_every_idle_worker(start_server):
    server = start_server(servers_config("echo"))
    address = server.address("echo")
    clients = []
    for _ in range(40):  # one after another, each answered before the next is opened
        client = Client(address)
        client.send(b"pid\r\n")
        clients.append(int(client.line()))
        client.close()
    counts = sorted(clients.count(pid) for pid in set(clients))
    # Not all on the first worker that waits. Not an even split either: on a loaded machine
    # a worker that is not scheduled in time leaves a turn to the other (9 of 40 seen).
    assert len(counts) == 2 and counts[0] >= 5, counts
