"""The metrics' pure parts: the master's totals (``tally.py``) and reading an HTTP request
head (``metrics.parse_request``), without processes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp.metrics import HttpRequest, parse_request, response
from prefork_tcp.scoreboard import Closed, Counts, Row, State
from prefork_tcp.tally import CLOSE_REASONS, RECYCLE_REASONS, Totals


def row(events: int) -> Row:
    return Row(0, 10, State.SERVING, 0, events, 0, 0.0)


def counts(connected: int = 0, close: int = 0, closed: tuple[int, ...] = (0,) * len(Closed), accepted: tuple[int, ...] = ()) -> Counts:
    return Counts(closed, connected, close, 0, (0,) * len(accepted), accepted)


def test_the_reasons_are_the_specs():
    assert CLOSE_REASONS == ("client", "app", "timeout", "limit", "error", "shutdown")
    assert {"max_jobs", "ttl", "idle_ttl", "max_worker_memory", "exec_ttl", "reload", "died"} <= set(RECYCLE_REASONS)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30))
def test_data_events_of_a_live_worker_never_go_back(steps):
    """The event count and the CONNECTED/CLOSE counts are published at different moments;
    whatever order they grow in, the DATA count reported never shrinks."""
    totals = Totals()
    events = connected = close = 0
    reported = []
    for more_events, more_connected, more_close in steps:
        connected += more_connected
        close += more_close
        events = max(events + more_events, 0)
        reported.append(totals.data_of(7, row(events), counts(connected, close)))
    assert reported == sorted(reported)
    assert reported[-1] >= events - connected - close


def test_a_gone_workers_counts_are_kept_once():
    totals = Totals()
    totals.data_of(7, row(10), counts(2, 1))
    totals.absorb(7, row(12), counts(3, 2, closed=(1, 1, 0, 0, 0, 0), accepted=(3, 0)), ("a", "b"))
    assert (totals.connected_events, totals.close_events, totals.data_events) == (3, 2, 7)
    assert totals.closed == [1, 1, 0, 0, 0, 0]
    assert totals.accepted == {"a": 3, "b": 0}
    totals.absorb(8, row(1), counts(1, 0, accepted=(1,)), ("a",))  # another worker, never scraped
    assert totals.accepted == {"a": 4, "b": 0} and totals.data_events == 7
    totals.forget_servers({"a"})
    assert totals.accepted == {"a": 4}


def test_a_recycle_for_no_known_reason_counts_as_died():
    totals = Totals()
    totals.recycled("max_jobs")
    totals.recycled("")
    totals.recycled("something new")
    assert totals.recycles["max_jobs"] == 1 and totals.recycles["died"] == 2
    assert set(totals.recycles) == set(RECYCLE_REASONS)


# -- an HTTP request head -----------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_request_or_a_reason(head):
    result = parse_request(head)
    assert isinstance(result, (HttpRequest, str))
    if isinstance(result, HttpRequest):
        assert result.path.startswith("/") and "?" not in result.path


TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8)
PATH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-_.", max_size=30).map(lambda p: "/" + p)
HEADER = st.tuples(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12), st.text(alphabet=" !#$%&*+./0123456789;=abcxyz", max_size=30)
)


@settings(max_examples=300)
@given(TOKEN, PATH, st.text(alphabet="a=&1", max_size=10), st.lists(HEADER, max_size=5), st.sampled_from(["\r\n", "\n"]))
def test_a_request_line_and_headers_are_read(method, path, query, headers, newline):
    lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1"] + [f"{name}: {value}" for name, value in headers]
    lines.append("Accept: application/openmetrics-text")
    request = parse_request(newline.join(lines).encode())
    assert isinstance(request, HttpRequest)
    assert (request.method, request.path, request.accept) == (method, path, "application/openmetrics-text")


def test_what_is_not_an_http_request_says_why():
    assert parse_request(b"GET /metrics") == "not an HTTP/1 request line"
    assert parse_request(b"GET metrics HTTP/1.1") == "not an HTTP/1 request line"
    assert parse_request(b"GET /metrics HTTP/2\r\n") == "not an HTTP/1 request line"
    assert parse_request(b"GET /metrics HTTP/1.1\r\nno colon") == "malformed header"
    assert parse_request(b"GET /metrics HTTP/1.1\r\n folded: value") == "malformed header"


def test_a_response_is_whole_and_closes():
    reply = response("200 OK", b"body", head_only=False)
    assert reply == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n"
        b"Connection: close\r\nCache-Control: no-store\r\n\r\nbody"
    )
    assert response("200 OK", b"body", head_only=True).endswith(
        b"Content-Length: 4\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
    )
    assert b"Allow: GET, HEAD\r\n" in response("405 Method Not Allowed", b"", allow="GET, HEAD")
