"""The public API an application sees: ``TcpWorker``, ``Request``, ``TcpEvent``, ``TcpResponse``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .events import Request, TcpEvent, TcpResponse, new_request, read_fields_with
from .logs import printable

try:
    import cython
except ImportError:  # plain Python without Cython installed
    from . import nocython as cython

if cython.compiled:
    from cython.cimports.prefork_tcp.crequest import field, keep_requests, make_request

    read_fields_with(field)  # member descriptors, which the interpreter reads in one load
    keep_requests(Request, TcpEvent)  # dropped requests are kept for make_request

if TYPE_CHECKING:
    from .connection import Connection, Event
    from .gate import Gate

log = logging.getLogger("prefork_tcp.app")


class Loop(Protocol):
    """What ``TcpWorker`` needs of a worker's event loop (``worker.Worker``)."""

    #: Connections answered since the loop last flushed; ``respond`` adds one when its
    #: first answer is written (the loop's hot path, see ``EventLoop.pump``).
    dirty: list[Connection]
    #: Whether the application's thread or the watchdog has the loop (``gate.py``).
    gate: Gate

    def pump(self) -> Iterator[Event]: ...
    def answer(self, conn: Connection, response: TcpResponse, body: bytes) -> None: ...
    def abandon(self, conn: Connection) -> None: ...
    def close_connection(self, uuid: str) -> bool: ...


# Where the current request stands.
_IDLE = 0  # no request yet, or wait_request() returned None
_AWAITING = 1  # CONNECTED or DATA delivered, not answered yet
_ANSWERED = 2
_CLOSE_EVENT = 3  # a CLOSE was delivered: answers are accepted and ignored

_RESPOND = TcpResponse.RESPOND
_READ = TcpResponse.READ
_CLOSE = TcpResponse.CLOSE
_CLOSE_EV = TcpEvent.CLOSE


class TcpWorker:
    """The application's handle on its worker process: wait for events, answer them.

    Created by prefork_tcp and passed to the application's callable; an application
    never constructs one itself.
    """

    __slots__ = ("_conn", "_dirty", "_events", "_gate", "_inside", "_loop", "_pid", "_pump", "_request", "_state")

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        #: The loop's events; ``_events`` is the same, except for one round after
        #: ``hold_for``.
        self._pump = self._events = loop.pump()
        self._dirty = loop.dirty
        self._gate = loop.gate
        self._conn: Connection | None = None
        self._request: Request | None = None
        self._state = _IDLE
        #: In the loop's code: taking the next event, or on a rarer way in (``gate.py``).
        self._inside = False
        self._pid = os.getpid()

    def wait_request(self) -> Request | None:
        """Return the next event of any connection this worker owns; ``None`` means stop.

        Blocks until an event arrives.  A CONNECTED or DATA request left unanswered is
        answered with ``CLOSE`` first.
        """
        self._inside = True  # in the loop's code from here (gate.py)
        if self._state == _AWAITING:
            if self._gate.moving:  # the watchdog has the loop: wait for it
                self._gate.wait()
            self._loop.answer(self._conn, _CLOSE, b"")  # type: ignore[arg-type]  # set by wait_request()
        item = next(self._events, None)
        self._inside = False
        if item is None:
            self._conn = self._request = None
            self._state = _IDLE
            return None
        conn: Connection  # a C type in the compiled core
        conn, event, body = item
        self._conn = conn
        if cython.compiled:  # allocated and filled in C (crequest.pxd)
            request = make_request(Request, event, body, conn.server, conn.uuid, conn.remote)
        else:
            request = new_request((event, body, conn.server, conn.uuid, conn.remote))
        self._request = request
        self._state = _CLOSE_EVENT if event is _CLOSE_EV else _AWAITING
        return request

    def respond(self, body: bytes | str, response: TcpResponse = _RESPOND) -> None:
        """Answer the current request with ``body`` and ``response`` (default: write, keep reading)."""
        data: bytes = body if type(body) is bytes else _as_bytes(body)  # compiled: C's size
        if response is _RESPOND and self._state == _AWAITING:  # the common case first
            self._state = _ANSWERED
            if data:  # Connection.write, inlined
                conn = self._conn
                out = conn.out  # type: ignore[union-attr]  # set by wait_request()
                if not out:
                    self._dirty.append(conn)  # type: ignore[arg-type]  # set by wait_request()
                out.append(data)
                conn.out_size += len(data)  # type: ignore[union-attr]  # set by wait_request()
            return
        if response is _READ and self._state == _AWAITING:  # nothing for the loop to do
            self._state = _ANSWERED
            return
        if response.__class__ is not TcpResponse:
            raise TypeError(f"response must be a TcpResponse, got {type(response).__name__}")
        if self._state != _AWAITING:
            self._check_answerable()
            return
        self._state = _ANSWERED
        self._enter()
        self._loop.answer(self._conn, response, data)  # type: ignore[arg-type]  # set by wait_request()
        self._inside = False

    def read(self) -> None:
        """Answer the current request with ``READ``: write nothing, keep reading."""
        if self._state == _AWAITING:  # nothing for the loop to do (``respond``, inlined)
            self._state = _ANSWERED
            return
        self.respond(b"", _READ)

    def close(self) -> None:
        """Answer the current request with ``CLOSE``: write nothing, close the connection."""
        self.respond(b"", _CLOSE)

    def error(self, message: str) -> None:
        """Report an application error: log it and close the current connection unwritten."""
        request = self._request
        text = printable(str(message))  # a client may have chosen it: no forged log lines
        if request is None:
            log.error("application error (worker %d): %s", self._pid, text)
            return
        log.error(
            "application error (worker %d, server %s, connection %s, remote %s): %s",
            self._pid,
            request.server,
            request.connection_uuid,
            printable(request.remote_address) or "-",
            text,
        )
        if self._state == _AWAITING:
            self._state = _ANSWERED
            self._enter()
            self._loop.abandon(self._conn)  # type: ignore[arg-type]  # set by wait_request()
            self._inside = False

    def close_connection(self, uuid: str) -> bool:
        """Close any connection of the whole server by uuid (RoadRunner's ``tcp.Close``).

        The worker owning it delivers its CLOSE. Return True if a connection with that
        uuid existed. Waits for the other workers' answers (at most 10 s).
        """
        if not isinstance(uuid, str):
            raise TypeError(f"uuid must be a str, got {type(uuid).__name__}")
        self._enter()
        try:
            return self._loop.close_connection(uuid)
        finally:
            self._inside = False

    @property
    def session(self) -> dict[str, Any]:
        """The current request's connection's own dict, for the application's state.

        The same object on every event of that connection, empty at CONNECTED, dropped
        after CLOSE; it moves with the connection to another worker (pickled), so its
        values must be picklable.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("there is no request: call wait_request() first")
        session = conn.session
        if session is None:
            session = conn.session = {}
        return session

    def in_loop(self) -> bool:
        """Whether the application's thread is in the loop's code now (for the watchdog,
        ``gate.py``: the compiled core has no Python frames to tell it)."""
        return self._inside

    def _enter(self) -> None:
        """A rare way into the loop: say so, and wait if the watchdog has the loop."""
        self._inside = True
        if self._gate.moving:
            self._gate.wait()

    def current_connection(self) -> Connection | None:
        """The connection of the request being handled (for the worker process, not the app)."""
        return self._conn

    def current_request(self) -> Request | None:
        """The request being handled (for the worker process, not the app)."""
        return self._request

    def hold_for(self, gate: Gate) -> None:
        """The watchdog took the loop (``gate.py``; for the worker process, not the app):
        the next ``wait_request`` waits until it lets go.  The event source is swapped for
        one round, so the application's thread pays nothing per event for this."""
        self._events = _after(gate, self)

    def _check_answerable(self) -> None:
        if self._state == _CLOSE_EVENT:
            return
        if self._state == _ANSWERED:
            request = self._request
            assert request is not None
            raise RuntimeError(f"request {request.event.value} of connection {request.connection_uuid} was already answered")
        raise RuntimeError("there is no request to answer: call wait_request() first")


def _after(gate: Gate, worker: TcpWorker) -> Iterator[Event]:
    """Wait for the watchdog, put the loop's own event source back, and go on with it."""
    gate.wait()
    pump = worker._events = worker._pump
    item = next(pump, None)
    if item is not None:
        yield item


def _as_bytes(body: object) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes):  # a bytes subclass
        return bytes(body)
    raise TypeError(f"body must be bytes or str, got {type(body).__name__}")
