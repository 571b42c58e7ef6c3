"""The management socket: one JSON request line in, one JSON reply line out.

The master listens on a unix socket (mode 0600) and answers in its main loop; a reply
may come later than the request (``close`` asks every worker first).  ``request()`` is
the client side used by the management commands.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from .sockets import remove_stale_socket, unlink_path

log = logging.getLogger("prefork_tcp.master")

#: Longest request line accepted.
MAX_REQUEST = 4096
#: How long a client has to send its request line, and to read its reply.
REQUEST_TIMEOUT = 2.0
#: How long a client may wait for a reply the master gives later (``close`` asks the workers).
ANSWER_TIMEOUT = 15.0
#: Clients served at once; more are turned away.
MAX_CLIENTS = 32
#: How long a management command waits for the master's answer.
CLIENT_TIMEOUT = 30.0


class ControlError(Exception):
    """The master could not be reached or refused the request."""


def socket_path(control_socket: str, pidfile: str) -> str:
    """Return where the control socket lives: the configured path, else beside the pidfile."""
    if control_socket:
        return control_socket
    return f"{pidfile}.sock" if pidfile else ""


class ControlServer:
    """The master's end: a non-blocking listening socket; clients are ``ControlClient``."""

    def __init__(self, path: str, sock: socket.socket | None = None) -> None:
        """Listen at ``path``, or on ``sock`` already listening there (passed on by an upgrade)."""
        self.path = path
        if sock is not None:
            self.sock = sock
            sock.setblocking(False)
            return
        _claim_path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        except OSError:
            self.sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self, now: float) -> ControlClient | None:
        """Return a new client, or None when none is waiting; raises OSError (EMFILE...)."""
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None
        return ControlClient(client, now + REQUEST_TIMEOUT)

    def close(self, unlink: bool = True) -> None:
        self.sock.close()
        if unlink:
            unlink_path(self.path)


class ControlClient:
    """One management client: its request line is read, and its reply written, without
    ever blocking the master; it is dropped at ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.deadline = deadline
        self.received = b""
        self.outgoing = b""
        #: A request was read (the reply may come later, as for ``close``).
        self.asked = False
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> dict[str, Any] | None:
        """Read what arrived; return the request once its line is complete, else None.

        A request that cannot be one (too long, not JSON, nested too deeply, no command)
        is answered with an error and the client is closed.
        """
        try:
            chunk = self.sock.recv(MAX_REQUEST + 1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.close()
            return None
        self.received += chunk
        if b"\n" not in self.received:
            if len(self.received) > MAX_REQUEST:
                self.refuse("request line too long")
            elif not chunk:
                self.refuse("no request line") if self.received else self.close()
            return None
        self.asked = True
        self.deadline = time.monotonic() + ANSWER_TIMEOUT
        line = self.received.partition(b"\n")[0]
        try:
            request = json.loads(line)
        except Exception as exc:  # ValueError, RecursionError (deep nesting), UnicodeDecodeError
            self.refuse(f"not JSON ({type(exc).__name__})")
            return None
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            self.refuse("a request is a JSON object with a command")
            return None
        return request

    def refuse(self, why: str) -> None:
        self.asked = True
        self.reply({"ok": False, "error": f"bad request: {why}"})

    def reply(self, answer: dict[str, Any]) -> None:
        """Queue the one reply line; it is written as the client reads, then the client closed."""
        if self.closed:
            return
        self.outgoing = json.dumps(answer).encode() + b"\n"
        self.deadline = max(self.deadline, time.monotonic() + REQUEST_TIMEOUT)
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


def _claim_path(path: str) -> None:
    """Remove a stale control socket at ``path``; refuse a live one or a file that is not a socket."""
    try:
        remove_stale_socket(path)
    except OSError as exc:
        raise ControlError(f"{path}: cannot be the control socket: {exc.strerror or exc}") from None


class Master(Protocol):
    """What the management commands ask of the master (``arbiter.Arbiter``)."""

    target: int

    def worker_rows(self) -> list[dict[str, object]]: ...
    def replace_all(self, reason: str) -> None: ...
    def reload(self) -> None: ...
    def stop(self, quick: bool) -> None: ...
    def add_worker(self) -> None: ...
    def remove_worker(self) -> None: ...
    def close_connection(self, uuid: str, done: Callable[[bool], None], exclude: int = 0) -> None: ...
    def upgrade(self) -> str: ...
    def master_info(self) -> dict[str, object]: ...


def answer(master: Master, client: ControlClient, request: dict[str, Any]) -> None:
    """Carry out one management request and reply (``close`` replies once the workers answered)."""
    command = request["command"]
    done = {"ok": True}
    if command == "workers":
        client.reply({"ok": True, "workers": master.worker_rows()})
    elif command == "reset":
        master.replace_all("reset")
        client.reply(done)
    elif command == "reload":
        master.reload()
        client.reply(done)
    elif command == "stop":
        client.reply(done)
        master.stop(quick=bool(request.get("quick")))
    elif command == "add-worker":
        master.add_worker()
        client.reply({"ok": True, "workers": master.target})
    elif command == "remove-worker":
        master.remove_worker()
        client.reply({"ok": True, "workers": master.target})
    elif command == "upgrade":
        why = master.upgrade()
        client.reply({"ok": False, "error": why} if why else {"ok": True, **master.master_info()})
    elif command == "master":
        client.reply({"ok": True, **master.master_info()})
    elif command == "close" and isinstance(request.get("uuid"), str):
        master.close_connection(request["uuid"], lambda found: client.reply({"ok": True, "found": found}))
    else:
        client.reply({"ok": False, "error": f"unknown command {command!r}"})


def request(path: str, command: str, timeout: float = CLIENT_TIMEOUT, **args: Any) -> dict[str, Any]:
    """Send one command to the master at ``path`` and return its reply; raises ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        answer = json.loads(_read_line(sock, 1 << 24))
    except FileNotFoundError:
        raise ControlError(f"no control socket at {path}: is the server running?") from None
    except ConnectionRefusedError:
        raise ControlError(f"nothing listens on {path}: the server is not running") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"{path}: {exc}") from None
    finally:
        sock.close()
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "the master refused the request"))
    return answer


def _read_line(sock: socket.socket, limit: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("line too long")
    return data


class ControlPlane:
    """The control socket and its clients inside the master's selector: accepted, read,
    answered and written without blocking, each client dropped at its deadline."""

    def __init__(self, path: str, selector: selectors.BaseSelector, sock: socket.socket | None = None) -> None:
        self.server = ControlServer(path, sock)
        self.selector = selector
        self.clients: dict[ControlClient, int] = {}  # client -> the events it is registered for
        self.resume = 0.0  # accepting paused until then (out of descriptors)
        self._warned = 0.0
        selector.register(self.server.sock, selectors.EVENT_READ, self)

    def accept(self, master: Master) -> None:
        """The listening socket is readable: take the waiting clients."""
        now = time.monotonic()
        for _ in range(MAX_CLIENTS):
            try:
                client = self.server.accept(now)
            except OSError as exc:  # out of descriptors: stop listening for a moment
                if now - self._warned >= 1.0:
                    self._warned = now
                    log.warning("cannot accept a control client: %s; pausing for 0.5s", exc.strerror or exc)
                self.selector.unregister(self.server.sock)
                self.resume = now + 0.5
                return
            if client is None:
                return
            if len(self.clients) >= MAX_CLIENTS:
                client.reply({"ok": False, "error": "too many management clients at once"})
                client.close()
                continue
            self.clients[client] = 0
        self.tend(master)

    def serve(self, client: ControlClient, events: int, master: Master) -> None:
        """A client's socket is ready: read its request (and answer it) or write its reply."""
        if events & selectors.EVENT_WRITE and client.replying:
            client.flush()
        elif events & selectors.EVENT_READ and not client.asked:
            request = client.read()
            if request is not None:
                answer(master, client, request)
        self.tend(master)

    def tend(self, master: Master) -> None:
        """Drop clients past their deadline; watch each for what it waits for."""
        now = time.monotonic()
        if self.resume and now >= self.resume:
            self.resume = 0.0
            self.selector.register(self.server.sock, selectors.EVENT_READ, self)
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

    def close_all(self, unlink: bool = True) -> None:
        """Close every client and the socket (``unlink``: remove its file too)."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        self.server.close(unlink)
