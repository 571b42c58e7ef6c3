"""The management socket: one JSON request line in, one JSON reply line out.

The master listens on a unix socket (mode 0600) and answers in its main loop
(``plane.Plane``); a reply may come later than the request (``close`` asks every
worker first).  ``request()`` is
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

from .plane import Plane, PlaneClient
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


def listen(path: str) -> socket.socket:
    """Return a unix socket listening at ``path`` (mode 0600); raises ControlError or OSError."""
    _claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


class ControlClient(PlaneClient):
    """One management client: a JSON request line in, a JSON reply line out."""

    def read(self) -> dict[str, Any] | None:
        """Read what arrived; return the request once its line is complete, else None.

        A request that cannot be one (too long, not JSON, nested too deeply, no command)
        is answered with an error and the client is closed.
        """
        line = self.receive((b"\n",), MAX_REQUEST)
        if line is None:
            return None
        self.deadline = time.monotonic() + ANSWER_TIMEOUT
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
        self.reply({"ok": False, "error": f"bad request: {why}"})

    def turn_away(self, why: str) -> None:
        self.reply({"ok": False, "error": why})

    def reply(self, answer: dict[str, Any]) -> None:
        """Queue the one reply line; it is written as the client reads, then the client closed."""
        self.send(json.dumps(answer).encode() + b"\n", REQUEST_TIMEOUT)


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


class ControlPlane(Plane[ControlClient]):
    """The control socket and its clients inside the master's selector (``plane.Plane``)."""

    def __init__(self, path: str, selector: selectors.BaseSelector, master: Master, sock: socket.socket | None = None) -> None:
        """Listen at ``path``, or on ``sock`` already listening there (passed on by an upgrade)."""
        self.path = path
        super().__init__(
            sock if sock is not None else listen(path),
            selector,
            ControlClient,
            lambda client, request: answer(master, client, request),
            "control",
            REQUEST_TIMEOUT,
            MAX_CLIENTS,
        )

    def close_all(self, unlink: bool = True) -> None:
        """Close every client and the socket (``unlink``: remove its file too)."""
        super().close_all()
        if unlink:
            unlink_path(self.path)
