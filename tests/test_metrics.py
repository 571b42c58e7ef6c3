"""Prometheus metrics and /ready from the real master (SPEC §8, ``[metrics] addr``): parsed
with prometheus_client's own parser, counted right while workers recycle, and served
without letting a slow or hostile scraper hold the master up."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from harness import DEADLINE, Client, closed_by_server, free_port, manage, servers_config, start, wait_for
from prometheus_client.parser import text_string_to_metric_families

from prefork_tcp.metrics import REQUEST_TIMEOUT

METRICS = '[metrics]\naddr = "127.0.0.1:0"\n'
FAMILIES = {
    "prefork_tcp_workers": "gauge",
    "prefork_tcp_connections": "gauge",
    "prefork_tcp_connections_accepted": "counter",
    "prefork_tcp_events": "counter",
    "prefork_tcp_worker_recycles": "counter",
    "prefork_tcp_handoffs": "counter",
    "prefork_tcp_closed": "counter",
    "prefork_tcp_worker_rss_bytes": "gauge",
}
_AT = re.compile(r"metrics at http://(\S+)/metrics")


def metrics_address(server) -> tuple[str, int]:
    line = server.wait_log(r"metrics at http://")[-1]
    host, _, port = _AT.search(line).group(1).rpartition(":")
    return host.strip("[]"), int(port)


def http(address: tuple[str, int], path: str = "/metrics", method: str = "GET", accept: str = "") -> tuple[int, str, str]:
    """One real HTTP request; return the status, the content type and the body."""
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    request = urllib.request.Request(f"http://{host}:{address[1]}{path}", method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(address: tuple[str, int]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """family name -> {labels: value}, as prometheus_client's parser reads the page."""
    status, content_type, body = http(address)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    seen = {}
    for family in text_string_to_metric_families(body):
        samples = {}
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_total"):
                continue  # _created, if a version writes it
            samples[tuple(sorted(sample.labels.items()))] = sample.value
        seen[family.name] = samples
        seen.setdefault("types", {})[(("family", family.name),)] = family.type  # type: ignore[assignment]
    return seen


def value(page, family: str, **labels: str) -> float:
    return page[family][tuple(sorted(labels.items()))]


def total(page, family: str) -> float:
    return sum(page[family].values())


def exchange(address, messages: int) -> None:
    with Client(address) as client:
        for i in range(messages):
            client.send(f"m{i}\r\n".encode())
            assert client.line() == f"m{i}\r\n".encode()


# -- the families, counted right ----------------------------------------------------------------------


def test_every_family_is_there_and_counts_what_happened(start_server):
    server = start(start_server, servers_config("a", "b", extra=METRICS), workers=2)
    where = metrics_address(server)
    for _ in range(5):
        exchange(server.address("a"), 3)
    held = Client(server.address("b"))
    held.send(b"hi\r\n")
    assert held.line() == b"hi\r\n"
    with Client(server.address("a")) as client:
        client.send(b"bye\r\n")  # the application closes it
        assert closed_by_server(client) == b"bye\r\n"

    def settled():
        page = scrape(where)
        return page if total(page, "prefork_tcp_closed") == 6 and value(page, "prefork_tcp_events", event="data") == 17 and page else None

    page = wait_for(settled, what="the counts of 6 closed connections")
    types = page.pop("types")
    for name, kind in FAMILIES.items():
        assert types[(("family", name),)] == kind, name
    assert value(page, "prefork_tcp_connections_accepted", server="a") == 6
    assert value(page, "prefork_tcp_connections_accepted", server="b") == 1
    assert value(page, "prefork_tcp_connections", server="a") == 0
    assert value(page, "prefork_tcp_connections", server="b") == 1
    assert value(page, "prefork_tcp_events", event="connected") == 7
    assert value(page, "prefork_tcp_events", event="close") == 6
    assert value(page, "prefork_tcp_closed", reason="client") == 5
    assert value(page, "prefork_tcp_closed", reason="app") == 1
    assert value(page, "prefork_tcp_workers", state="serving") == 2
    assert sum(page["prefork_tcp_workers"].values()) == 2
    assert len(page["prefork_tcp_worker_rss_bytes"]) == 2 and all(v > 1e6 for v in page["prefork_tcp_worker_rss_bytes"].values())
    assert total(page, "prefork_tcp_worker_recycles") == 0 and total(page, "prefork_tcp_handoffs") == 0
    assert page["process_resident_memory_bytes"][()] > 1e6  # the master's own
    held.close()


@pytest.mark.parametrize(
    "extra, send, reason",
    [
        ('idle_timeout = "300ms"\n', b"", "timeout"),
        ("max_message_size = 1024\n", b"x" * 4096, "limit"),
        ("", b"raise\r\n", "error"),
    ],
)
def test_why_a_connection_closed_is_counted(start_server, extra, send, reason):
    server = start(start_server, servers_config("a", a=extra, extra=METRICS), workers=1)
    where = metrics_address(server)
    with Client(server.address("a")) as client:
        client.send(send)
        closed_by_server(client)
    page = wait_for(lambda: (p := scrape(where)) and total(p, "prefork_tcp_closed") == 1 and p, what="one close")
    assert value(page, "prefork_tcp_closed", reason=reason) == 1


def test_nothing_goes_back_and_every_connection_is_counted_while_workers_recycle(start_server):
    """Clients come and go while max_jobs recycles the workers every few dozen events and a
    scraper reads the page as fast as it can: every counter only grows, and once the clients
    are done, accepted = CONNECTED = CLOSE = closed and DATA is every message sent."""
    server = start(start_server, servers_config("a", extra=METRICS + "[tcp.pool]\nmax_jobs = 40\n"), workers=2)
    where = metrics_address(server)
    counters = ["prefork_tcp_connections_accepted", "prefork_tcp_events", "prefork_tcp_closed", "prefork_tcp_handoffs"]
    counters.append("prefork_tcp_worker_recycles")
    pages, problems = [], []
    done = threading.Event()

    def scraper():
        while not done.is_set():
            try:
                pages.append(scrape(where))
            except Exception as exc:  # reported below, with the test's own assertion
                problems.append(repr(exc))
                return

    thread = threading.Thread(target=scraper)
    thread.start()
    clients, messages = 0, 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and (clients < 60 or len(pages) < 20):
            with Client(server.address("a")) as client:  # several connections open at once, some held across recycles
                with Client(server.address("a")) as other:
                    for i in range(5):
                        for c in (client, other):
                            c.send(f"m{i}\r\n".encode())
                            assert c.line() == f"m{i}\r\n".encode()
            clients, messages = clients + 2, messages + 10
    finally:
        done.set()
        thread.join(DEADLINE)
    assert not problems, problems
    for before, after in zip(pages, pages[1:], strict=False):
        for family in counters:
            for labels, seen in before[family].items():
                assert after[family].get(labels, 0) >= seen, (family, labels, seen, after[family].get(labels))

    def settled():
        page = scrape(where)
        return page if total(page, "prefork_tcp_closed") == clients else None

    page = wait_for(settled, what=f"{clients} closed connections")
    assert value(page, "prefork_tcp_connections_accepted", server="a") == clients
    assert value(page, "prefork_tcp_events", event="connected") == clients
    assert value(page, "prefork_tcp_events", event="close") == clients
    assert value(page, "prefork_tcp_events", event="data") == messages
    assert value(page, "prefork_tcp_closed", reason="client") == clients
    assert value(page, "prefork_tcp_worker_recycles", reason="max_jobs") >= 3
    assert value(page, "prefork_tcp_connections", server="a") == 0
    assert len(page["prefork_tcp_worker_rss_bytes"]) <= 4  # the live workers only, however many came and went


def test_handoffs_count_connections_moved_by_a_reset(start_server):
    server = start(start_server, servers_config("a", extra=METRICS + '[control]\nsocket = "ctl.sock"\n'), workers=2)
    where = metrics_address(server)
    clients = [Client(server.address("a")) for _ in range(6)]
    for client in clients:
        client.send(b"hi\r\n")
        assert client.line() == b"hi\r\n"
    assert manage("reset", "--control", str(server.tmp_path / "ctl.sock")).returncode == 0
    # A handoff counts once the new owner has the connection: wait for none in transit.
    page = wait_for(
        lambda: (
            (p := scrape(where))
            and value(p, "prefork_tcp_worker_recycles", reason="reset") == 2
            and value(p, "prefork_tcp_connections_in_transit") == 0
            and p
        ),
        what="2 resets and every connection taken",
    )
    assert value(page, "prefork_tcp_handoffs") == 6
    assert value(page, "prefork_tcp_connections", server="a") == 6
    assert total(page, "prefork_tcp_closed") == 0
    for client in clients:
        client.send(b"still\r\n")
        assert client.line() == b"still\r\n"
        client.close()


def test_openmetrics_when_the_scraper_asks_for_it(start_server):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    status, content_type, body = http(metrics_address(server), accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n") and "prefork_tcp_events_total" in body


# -- /ready -------------------------------------------------------------------------------------------


def test_ready_says_whether_a_worker_serves_and_turns_503_while_stopping(start_server):
    server = start(start_server, servers_config("a", extra=METRICS + '[tcp.pool]\ndestroy_timeout = "20s"\n'), workers=1)
    where = metrics_address(server)
    assert http(where, "/ready") == (200, "text/plain; charset=utf-8", "ready\n")
    assert http(where, "/ready", method="HEAD")[0] == 200
    # A client that never reads keeps the worker draining; the master serves meanwhile.
    stuck = socket.create_connection(server.address("a"))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"big 8000000\r\n")
    wait_for(lambda: scrape(where)["prefork_tcp_connections"][(("server", "a"),)] == 1, what="the connection")
    server.send_signal(signal.SIGTERM)
    status, _, body = wait_for(lambda: (r := http(where, "/ready"))[0] == 503 and r, what="503")
    assert body == "not ready: stopping\n"
    page = wait_for(lambda: (p := scrape(where)) and total(p, "prefork_tcp_closed") == 1 and p, what="the close")
    assert value(page, "prefork_tcp_closed", reason="shutdown") == 1
    stuck.close()
    assert server.stop() == 0


# -- what a scraper cannot do to the master ---------------------------------------------------------


def test_scrapers_that_never_finish_cost_nothing_and_the_rest_is_answered(start_server):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    where = metrics_address(server)
    idle = [socket.create_connection(where) for _ in range(16)]  # every slot taken, not one request
    idle[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # one unfinished
    with socket.create_connection(where) as extra:  # the 17th: turned away at once
        extra.settimeout(DEADLINE)
        extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert read_all(extra).startswith(b"HTTP/1.1 503 ")
    exchange(server.address("a"), 50)  # the application is served all the while
    for sock in idle[1:]:
        sock.close()
    wait_for(lambda: http(where)[0] == 200, what="a scrape once the slots are free")
    # The unfinished one is dropped at its deadline (REQUEST_TIMEOUT), never answered.
    idle[0].settimeout(REQUEST_TIMEOUT + DEADLINE)
    started = time.monotonic()
    assert read_all(idle[0]) == b""
    assert REQUEST_TIMEOUT - 1 <= time.monotonic() - started
    idle[0].close()


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /metrics HTTP/1.0\n\n", b"200"),  # bare line feeds, as printf | nc sends
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n", b"200"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", b"400"),  # TLS to a plain endpoint
        (b"GET metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /metrics SPDY/3\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n", b"400"),  # half a head, then the client's FIN
        # Past the 8 KiB head: refused; what the client sent beyond is never read, so its
        # kernel may see a reset before it reads the answer.
        (b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n", b"400 or reset"),
    ],
    ids=lambda value: value[:24].decode("latin-1") if isinstance(value, bytes) else None,
)
def test_what_the_endpoint_answers(start_server, request_bytes, status):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    with socket.create_connection(metrics_address(server)) as sock:
        sock.settimeout(DEADLINE)
        try:
            sock.sendall(request_bytes)
            sock.shutdown(socket.SHUT_WR)
            reply = read_all(sock)
        except OSError as exc:  # reset: seen by the send, the shutdown (ENOTCONN) or the read
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
            assert status == b"400 or reset"
            reply = b"HTTP/1.1 400 or reset\r\nConnection: close\r\n\r\n"
    assert reply.split(b" ", 1)[1].startswith(status[:3]), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    if request_bytes.startswith(b"HEAD"):
        assert body == b"" and int(re.search(rb"Content-Length: (\d+)", head).group(1)) > 0
    assert http(metrics_address(server))[0] == 200  # and the next scraper is served


# -- configuration, reload, upgrade -----------------------------------------------------------------


@pytest.mark.parametrize(
    "addr, error",
    [
        ('"unix:///tmp/m.sock"', "metrics.addr: expected a TCP address"),
        ('"127.0.0.1:99999"', "metrics.addr"),
        ("9100", "metrics.addr"),
    ],
)
def test_a_bad_metrics_address_is_a_config_error(tmp_path, addr, error):
    config = tmp_path / "bad.toml"
    config.write_text(servers_config("a", extra=f"[metrics]\naddr = {addr}\n"))
    result = manage("check", "-c", str(config))
    assert result.returncode == 2 and error in result.stderr, result.stderr


def test_a_taken_metrics_port_stops_the_start_with_the_reason(start_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(servers_config("a", extra=f'[metrics]\naddr = "127.0.0.1:{port}"\n'), workers=1, ready=False)
        assert server.proc.wait(DEADLINE) == 1
    assert re.search(rf"metrics.addr: cannot listen at tcp://127.0.0.1:{port}: Address already in use", server.log), server.log


def test_a_reload_moves_the_metrics_and_an_upgrade_keeps_them(start_server, tmp_path):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    first = metrics_address(server)
    exchange(server.address("a"), 2)
    port = free_port()
    (tmp_path / "server.toml").write_text(servers_config("a", extra=f'[metrics]\naddr = "127.0.0.1:{port}"\n'))
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: not _refused(("127.0.0.1", port)), what="the metrics at the new address")
    # The new socket listens before the old one is closed (a failed move keeps the old):
    # a connection can come in between.
    wait_for(lambda: _refused(first), what="the old address to close")
    page = scrape(("127.0.0.1", port))
    assert value(page, "prefork_tcp_events", event="data") == 2  # the totals stay with the master
    server.wait_log("reload complete")
    server.upgrade()
    page = scrape(("127.0.0.1", port))  # the same socket, now the new master's
    assert value(page, "prefork_tcp_workers", state="serving") == 1
    assert server.stop() is None
    wait_for(lambda: _refused(("127.0.0.1", port)), what="the endpoint to close")


def _refused(address) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return True
    return False


def test_ready_stays_200_while_a_reload_replaces_the_only_worker(start_server, tmp_path):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    where = metrics_address(server)
    seen = []
    server.send_signal(signal.SIGHUP)
    while not any("reload complete" in line for line in server.lines):
        seen.append(http(where, "/ready")[0])
    seen.append(http(where, "/ready")[0])
    assert set(seen) == {200}, seen


def test_an_accept_header_prometheus_client_cannot_read_gets_the_text_format(start_server):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    status, content_type, body = http(metrics_address(server), accept="text/plain; version=x")
    assert status == 200 and content_type.startswith("text/plain") and "prefork_tcp_workers" in body


def test_the_connections_of_a_killed_worker_count_as_closed_by_an_error(start_server):
    server = start(start_server, servers_config("a", extra=METRICS), workers=1)
    where = metrics_address(server)
    clients = [Client(server.address("a")) for _ in range(3)]
    for client in clients:
        client.send(b"hi\r\n")
        assert client.line() == b"hi\r\n"
    (victim,) = server.worker_pids()
    os.kill(victim, signal.SIGKILL)
    page = wait_for(lambda: (p := scrape(where)) and value(p, "prefork_tcp_worker_recycles", reason="died") == 1 and p, what="the death")
    assert value(page, "prefork_tcp_closed", reason="error") == 3
    assert value(page, "prefork_tcp_connections", server="a") == 0
    for client in clients:
        client.close()


def test_a_reload_can_move_the_metrics_to_another_host_on_the_same_port(start_server, tmp_path):
    port = free_port()
    server = start(start_server, servers_config("a", extra=f'[metrics]\naddr = "127.0.0.1:{port}"\n'), workers=1)
    (tmp_path / "server.toml").write_text(servers_config("a", extra=f'[metrics]\naddr = "localhost:{port}"\n'))
    server.send_signal(signal.SIGHUP)
    server.wait_log("reload complete")
    assert "config not reloaded" not in server.log
    assert len(server.wait_log(rf"metrics at http://127.0.0.1:{port}/metrics", count=2)) == 2
    assert http(("127.0.0.1", port))[0] == 200
