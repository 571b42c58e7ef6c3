"""Small servers inside the master's loop: one request in, one reply out, never blocking.

The control socket (``control.py``) and the metrics endpoint (``metrics.py``) are each a
``Plane``: a listening socket in the master's selector and at most ``max_clients``
clients.  A client's request is read as it arrives, answered, and its reply written as
the client reads it; a client that does not finish its request, or does not read its
reply, is dropped at its deadline.  So a slow or hostile client costs a descriptor and
a few kilobytes, never a moment of the master's loop.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("prefork_tcp.master")

#: How long a client beyond ``max_clients`` has to send its request and read the refusal.
TURN_AWAY_TIMEOUT = 1.0


class PlaneClient:
    """One client of a ``Plane``; subclasses say how a request is read (``read``)."""

    def __init__(self, sock: socket.socket, plane: Plane[Any], deadline: float) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.plane = plane
        self.deadline = deadline
        self.received = b""
        self.outgoing = b""
        #: A request was read (the reply may come later).
        self.asked = False
        self.closed = False
        #: Why its request gets a refusal instead of an answer ("": it is served).
        self.turned_away = ""

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Any | None:
        """Read what arrived; return the request once it is whole, else None."""
        raise NotImplementedError

    def receive(self, ends: tuple[bytes, ...], limit: int) -> bytes | None:
        """Read what arrived; return what came before the first of ``ends`` once one came, else None.

        More than ``limit`` bytes without one, or the client closing before one, is
        refused (``refuse``); the client is then answered and closed.
        """
        try:
            chunk = self.sock.recv(limit + 1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.close()
            return None
        self.received += chunk
        found = [at for at in (self.received.find(end) for end in ends) if at >= 0]
        if not found:
            if len(self.received) > limit:
                self.refuse("request too long")
            elif not chunk:
                self.refuse("incomplete request") if self.received else self.close()
            return None
        self.asked = True
        return self.received[: min(found)]

    def refuse(self, why: str) -> None:
        """Answer a request that cannot be one, and close."""
        raise NotImplementedError

    def turn_away(self, why: str) -> None:
        """Answer a client the plane has no room for (it is closed right after)."""
        raise NotImplementedError

    def send(self, reply: bytes, timeout: float) -> None:
        """Queue the one reply; it is written as the client reads, then the client closed."""
        if self.closed:
            return
        self.asked = True
        self.outgoing = reply
        self.deadline = max(self.deadline, time.monotonic() + timeout)
        self.flush()

    @property
    def replying(self) -> bool:
        return bool(self.outgoing) and not self.closed

    def flush(self) -> None:
        """Write what the socket takes of the reply; close once it is all written."""
        try:
            sent = self.sock.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.outgoing = self.outgoing[sent:]
        if not self.outgoing:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


C = TypeVar("C", bound=PlaneClient)


class Plane(Generic[C]):
    """A listening socket and its clients in the master's selector; see the module docstring.

    ``answer(client, request)`` replies to a request now or later (``client.send``).
    Clients beyond ``max_clients`` (up to as many again) get a refusal; beyond that,
    they are closed unanswered.
    """

    def __init__(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        make_client: Callable[[socket.socket, Plane[C], float], C],
        answer: Callable[[C, Any], None],
        what: str,
        request_timeout: float,
        max_clients: int,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.selector = selector
        self.make_client = make_client
        self.answer = answer
        self.what = what
        self.request_timeout = request_timeout
        self.max_clients = max_clients
        self.clients: dict[C, int] = {}  # client -> the events it is registered for
        self.resume = 0.0  # accepting paused until then (out of descriptors)
        self._warned = 0.0
        #: ``close_all`` ran (events for it may still come in the same round of the loop).
        self.closed = False
        selector.register(sock, selectors.EVENT_READ, self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> None:
        """The listening socket is readable: take the waiting clients."""
        if self.closed:
            return
        now = time.monotonic()
        for _ in range(self.max_clients):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as exc:  # out of descriptors: stop listening for a moment
                if now - self._warned >= 1.0:
                    self._warned = now
                    log.warning("cannot accept a %s client: %s; pausing for 0.5s", self.what, exc.strerror or exc)
                self.selector.unregister(self.sock)
                self.resume = now + 0.5
                break
            if len(self.clients) >= 2 * self.max_clients:  # a flood: closed unanswered
                sock.close()
                continue
            client = self.make_client(sock, self, now + self.request_timeout)
            if len(self.clients) >= self.max_clients:  # read, then refused: a client that reads its answer sees why
                client.turned_away = f"too many {self.what} clients at once"
                client.deadline = now + min(self.request_timeout, TURN_AWAY_TIMEOUT)
            self.clients[client] = 0
        self.tend()

    def serve(self, client: C, events: int) -> None:
        """A client's socket is ready: read its request (and answer it) or write its reply."""
        if self.closed:
            return
        if events & selectors.EVENT_WRITE and client.replying:
            client.flush()
        elif events & selectors.EVENT_READ and not client.asked:
            request = client.read()
            if request is not None:
                try:
                    client.turn_away(client.turned_away) if client.turned_away else self.answer(client, request)
                except Exception:  # a bug answering one client must not end the round of the loop
                    log.exception("cannot answer a %s client", self.what)
                    client.close()
        self.tend()

    def tend(self) -> None:
        """Drop clients past their deadline; watch each for what it waits for."""
        if self.closed:
            return
        now = time.monotonic()
        if self.resume and now >= self.resume:
            self.resume = 0.0
            self.selector.register(self.sock, selectors.EVENT_READ, self)
        for client, registered in list(self.clients.items()):
            if not client.closed and now >= client.deadline:
                client.close()  # never finished its request, or never read its reply
            wanted = 0
            if not client.closed:
                wanted = selectors.EVENT_WRITE if client.replying else (0 if client.asked else selectors.EVENT_READ)
            if wanted != registered:
                if registered:
                    self.selector.unregister(client.sock)
                if wanted:
                    self.selector.register(client.sock, wanted, client)
                self.clients[client] = wanted
            if client.closed:
                del self.clients[client]

    @property
    def deadline(self) -> float:
        """The earliest moment ``tend`` has something to do (0: nothing pending)."""
        times = [c.deadline for c in self.clients] + ([self.resume] if self.resume else [])
        return min(times, default=0.0)

    def close_all(self) -> None:
        """Close every client and the listening socket (out of the selector first: the
        master may go on with it, as after a reload that moved the metrics)."""
        self.closed = True
        for client, registered in self.clients.items():
            if registered:
                _forget(self.selector, client.sock)
            client.close()
        self.clients.clear()
        if not self.resume:
            _forget(self.selector, self.sock)
        self.sock.close()


def _forget(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    try:
        selector.unregister(sock)
    except (KeyError, ValueError, RuntimeError, OSError):  # a worker closed its copy of the selector first
        pass
