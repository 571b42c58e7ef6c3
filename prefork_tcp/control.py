"""The management socket: one JSON request line in, one JSON reply line out.

The master listens on a unix socket (mode 0600) and answers in its main loop; a reply
may come later than the request (``close`` asks every worker first).  ``request()`` is
the client side used by the management commands.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("prefork_tcp.master")

#: Longest request line accepted.
MAX_REQUEST = 4096
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
    """The master's end: accepts clients, hands requests over, sends replies."""

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, dict[str, Any]] | None:
        """Return a client and its request, or None when there was nothing usable."""
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        client.settimeout(2.0)  # a local client that stalls cannot hold the master long
        try:
            line = _read_line(client, MAX_REQUEST)
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("a request is a JSON object with a command")
        except (OSError, ValueError) as exc:
            reply(client, {"ok": False, "error": f"bad request: {exc}"})
            return None
        return client, request

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


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


def answer(master: Master, client: socket.socket, request: dict[str, Any]) -> None:
    """Carry out one management request and reply (``close`` replies once the workers answered)."""
    command = request["command"]
    done = {"ok": True}
    if command == "workers":
        reply(client, {"ok": True, "workers": master.worker_rows()})
    elif command == "reset":
        master.replace_all("reset")
        reply(client, done)
    elif command == "reload":
        master.reload()
        reply(client, done)
    elif command == "stop":
        reply(client, done)
        master.stop(quick=bool(request.get("quick")))
    elif command == "add-worker":
        master.add_worker()
        reply(client, {"ok": True, "workers": master.target})
    elif command == "remove-worker":
        master.remove_worker()
        reply(client, {"ok": True, "workers": master.target})
    elif command == "close" and isinstance(request.get("uuid"), str):
        master.close_connection(request["uuid"], lambda found: reply(client, {"ok": True, "found": found}))
    else:
        reply(client, {"ok": False, "error": f"unknown command {command!r}"})


def reply(client: socket.socket, answer: dict[str, Any]) -> None:
    """Send the one reply line and close the client."""
    try:
        client.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass
    finally:
        client.close()


def request(path: str, command: str, **args: Any) -> dict[str, Any]:
    """Send one command to the master at ``path`` and return its reply; raises ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
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
    return answer  # type: ignore[no-any-return]


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
