"""Prometheus metrics and a readiness check, served by the master (SPEC §8, ``[metrics] addr``).

Every value comes from the scoreboard (what each live worker counted in its slot) and
the master's totals (``tally.Totals``: what gone workers counted, recycles, handoffs):
no file per process, nothing that grows as workers recycle.  A scrape reads a few
fields per worker and each worker's RSS; it is served by the master's own loop, without
a thread, through ``plane.Plane`` (a scraper that never finishes its request, or never
reads the answer, costs a descriptor until its deadline).

``prometheus_client`` writes the exposition formats (the text format, or OpenMetrics when
the scraper asks for it); this module gives it one custom collector.  It is imported only
when ``[metrics] addr`` is set.

Paths: ``/metrics``; ``/ready`` (200 while at least one worker serves and the server is
not stopping, else 503: a readiness check that never reaches the application).
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from . import __version__
from .handoff import Relay
from .plane import Plane, PlaneClient
from .scoreboard import Row, Scoreboard, State
from .sockets import Address, Listener, bind
from .tally import CLOSE_REASONS, Totals
from .workerhandle import WorkerHandle, rss_bytes

log = logging.getLogger("prefork_tcp.master")

#: Longest request head accepted (request line and headers).
MAX_REQUEST = 8192
#: How long a scraper has to send its request, and then to read the answer.
REQUEST_TIMEOUT = 10.0
#: Scrapers served at once; more are answered 503.
MAX_CLIENTS = 16
WORKER_STATES = ("booting", "serving", "slow", "retiring")


class Observed(Protocol):
    """What the metrics read of the master (``workerpool.WorkerPool``)."""

    workers: dict[int, WorkerHandle]
    board: Scoreboard
    totals: Totals
    relay: Relay
    listeners: list[Listener]
    stopping: bool


def worker_state(handle: WorkerHandle, row: Row) -> str:
    """One of WORKER_STATES, as the master sees the worker."""
    if not handle.ready:
        return "booting"
    if handle.retiring or handle.stopping or handle.killed or handle.ended:
        return "retiring"
    return "slow" if row.state == State.SLOW else "serving"


class Collector:
    """The prefork_tcp families, read from the master at each scrape."""

    def __init__(self, master: Observed) -> None:
        self.master = master

    def collect(self) -> Iterator[Metric]:
        master, totals = self.master, self.master.totals
        live = [(h, master.board.row(h.slot), master.board.counts(h.slot, len(h.servers))) for h in master.workers.values()]

        yield _family(GaugeMetricFamily, "info", "The running version", ["version"], [((__version__,), 1)])
        states = dict.fromkeys(WORKER_STATES, 0)
        for handle, row, _ in live:
            states[worker_state(handle, row)] += 1
        yield _family(GaugeMetricFamily, "workers", "Worker processes, by state", ["state"], [((s,), n) for s, n in states.items()])

        open_ = {lst.name: 0 for lst in master.listeners}
        accepted = dict.fromkeys(open_, 0) | totals.accepted
        for handle, _, counts in live:
            for name, count, new in zip(handle.servers, counts.open, counts.accepted, strict=True):
                open_[name] = open_.get(name, 0) + count
                accepted[name] = accepted.get(name, 0) + new
        yield _family(GaugeMetricFamily, "connections", "Open connections, by server", ["server"], [((s,), n) for s, n in open_.items()])
        yield _family(
            CounterMetricFamily,
            "connections_accepted",
            "Connections accepted, by server",
            ["server"],
            [((s,), n) for s, n in accepted.items()],
        )
        yield _family(
            GaugeMetricFamily,
            "connections_in_transit",
            "Connections handed over by one worker and not yet adopted by another",
            [],
            [((), len(master.relay))],
        )

        connected, data, close = totals.connected_events, totals.data_events, totals.close_events
        for handle, row, counts in live:
            connected += counts.connected_events
            close += counts.close_events
            data += totals.data_of(handle.pid, row, counts)
        yield _family(
            CounterMetricFamily,
            "events",
            "Events handed to the application, by event",
            ["event"],
            [(("connected",), connected), (("data",), data), (("close",), close)],
        )
        closed = list(totals.closed)
        refused = totals.headers_refused
        for _, _, counts in live:
            closed = [a + b for a, b in zip(closed, counts.closed, strict=True)]
            refused += counts.headers_refused
        yield _family(
            CounterMetricFamily,
            "closed",
            "Connections closed, by reason",
            ["reason"],
            [((r,), n) for r, n in zip(CLOSE_REASONS, closed, strict=True)],
        )
        yield _family(
            CounterMetricFamily,
            "proxy_headers_refused",
            "Connections closed without CONNECTED: no valid PROXY header in time, or a peer outside proxy_allow_from",
            [],
            [((), refused)],
        )
        yield _family(
            CounterMetricFamily,
            "worker_recycles",
            "Workers replaced, by reason",
            ["reason"],
            [((r,), n) for r, n in totals.recycles.items()],
        )
        yield _family(
            CounterMetricFamily,
            "handoffs",
            "Connections handed from one worker to another (or to a new master)",
            [],
            [((), master.relay.delivered)],
        )
        rss = [((str(handle.slot),), rss_bytes(handle.pid)) for handle, _, _ in live]
        yield _family(
            GaugeMetricFamily,
            "worker_rss_bytes",
            "Resident memory of each worker; worker is its scoreboard slot, reused as workers recycle",
            ["worker"],
            [(labels, value) for labels, value in rss if value is not None],
        )


def _family(kind: Any, name: str, documentation: str, labels: list[str], samples: list[tuple[tuple[str, ...], float]]) -> Metric:
    family = kind(f"prefork_tcp_{name}", documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def registry_for(master: Observed) -> CollectorRegistry:
    """The master's families and its own process's (``process_*``: CPU, memory, descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(master))
    ProcessCollector(registry=registry)
    return registry


# -- the endpoint ----------------------------------------------------------------------------


class HttpRequest:
    """The parts of an HTTP request the endpoint uses."""

    __slots__ = ("method", "path", "accept")

    def __init__(self, method: str, path: str, accept: str) -> None:
        self.method, self.path, self.accept = method, path, accept


def parse_request(head: bytes) -> HttpRequest | str:
    """Return the request in an HTTP request head (without its blank line), or why it is not one."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        return "not text"
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return "not an HTTP/1 request line"
    accept = ""
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return "malformed header"
        if name.lower() == "accept":
            accept = value.strip()
    return HttpRequest(parts[0], parts[1].partition("?")[0], accept)


def response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head_only: bool = False, allow: str = "") -> bytes:
    """One whole HTTP/1.1 response; the connection closes after it."""
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class MetricsClient(PlaneClient):
    """One scraper: an HTTP/1 request head in, one response out, then the connection closes."""

    def read(self) -> HttpRequest | None:
        head = self.receive((b"\r\n\r\n", b"\n\n"), MAX_REQUEST)  # bare LFs: printf | nc
        if head is None:
            return None
        request = parse_request(head)
        if isinstance(request, str):
            self.refuse(request)
            return None
        return request

    def refuse(self, why: str) -> None:
        self.send(response("400 Bad Request", f"bad request: {why}\n".encode()), REQUEST_TIMEOUT)

    def turn_away(self, why: str) -> None:
        self.send(response("503 Service Unavailable", f"{why}\n".encode()), REQUEST_TIMEOUT)


class MetricsPlane(Plane[MetricsClient]):
    """The metrics endpoint in the master's selector; see the module docstring."""

    def __init__(self, address: Address, selector: selectors.BaseSelector, master: Observed, sock: socket.socket | None = None) -> None:
        """Listen at ``address``, or on ``sock`` already listening there (passed on by an upgrade)."""
        self.address = address
        self.master = master
        self.registry = registry_for(master)
        #: Scrapes answered, and the master's CPU seconds they took (the scrape cost).
        self.scrapes = 0
        self.scrape_seconds = 0.0
        super().__init__(
            sock if sock is not None else bind(address, 64), selector, MetricsClient, self._answer, "metrics", REQUEST_TIMEOUT, MAX_CLIENTS
        )

    def _answer(self, client: MetricsClient, request: HttpRequest) -> None:
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            client.send(response("405 Method Not Allowed", b"GET or HEAD\n", allow="GET, HEAD"), REQUEST_TIMEOUT)
        elif request.path == "/metrics":
            started = time.process_time()
            try:
                encode, content_type = choose_encoder(request.accept)
            except Exception:  # an Accept header prometheus_client cannot read: the text format
                encode, content_type = choose_encoder("")
            body = encode(self.registry)
            self.scrapes += 1
            self.scrape_seconds += time.process_time() - started
            client.send(response("200 OK", body, content_type, head_only), REQUEST_TIMEOUT)
        elif request.path == "/ready":
            why = not_ready(self.master)
            status = "503 Service Unavailable" if why else "200 OK"
            client.send(response(status, f"{why or 'ready'}\n".encode(), head_only=head_only), REQUEST_TIMEOUT)
        else:
            client.send(response("404 Not Found", b"not found: try /metrics or /ready\n", head_only=head_only), REQUEST_TIMEOUT)


def not_ready(master: Observed) -> str:
    """Why the server should get no new connections now ("" when it should): it stops, or
    no worker accepts. A worker being replaced accepts until it is told to hand over, and
    during an upgrade the new master's workers serve for both."""
    if master.stopping:
        return "not ready: stopping"
    accepting = any(h.ready and not (h.retire_sent or h.stopping or h.killed or h.ended) for h in master.workers.values())
    successor = getattr(master, "successor", None)
    if not accepting and not (successor is not None and successor.taking):
        return "not ready: no worker serves"
    return ""
