"""systemd: readiness notifications (``sd_notify``) and socket activation.

Both are small protocols, written here rather than depending on libsystemd:

- **Notifications**: one datagram per message to the ``AF_UNIX`` socket named by
  ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace), newline-separated
  ``KEY=value`` lines.  The master sends ``READY=1`` once its workers serve,
  ``RELOADING=1`` with ``MONOTONIC_USEC`` and then ``READY=1`` around a reload (for
  ``Type=notify-reload``), ``STOPPING=1``, ``STATUS=`` lines, ``MAINPID=`` when an upgrade
  hands over to a new master (which then says ``READY=1``), and ``WATCHDOG=1`` every half
  of ``$WATCHDOG_USEC`` while its loop runs.  Without ``$NOTIFY_SOCKET`` nothing is sent.
- **Socket activation**: ``$LISTEN_PID`` (this process), ``$LISTEN_FDS`` (descriptors from
  3 on) and ``$LISTEN_FDNAMES`` (colon-separated).  The sockets are matched to servers by
  name (``FileDescriptorName=`` equal to the server's name), else (systemd's default
  names) in config order; a count, type or name that does not fit is a config error.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping, Sequence

#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


class Notifier:
    """Sends notifications to the service manager; every method is a no-op without one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.sock: socket.socket | None = None
        if self.address and path[0] in "/@":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        watchdog = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        #: How often to send WATCHDOG=1 (0: never).
        self.watchdog_interval = int(watchdog) / 2e6 if watchdog.isdigit() and int(watchdog) and for_us and self.sock else 0.0
        self.next_watchdog = 0.0
        self.status = ""
        #: Say nothing (a new master during an upgrade: systemd hears from the main process only).
        self.muted = False

    def send(self, *lines: str) -> bool:
        """Send one notification; False if there is no service manager, it is gone, or muted."""
        if self.sock is None or self.muted:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def unmute(self) -> None:
        """Speak from now on (a new master taking charge): the next round sends WATCHDOG=1 at once."""
        self.muted = False
        self.next_watchdog = 0.0

    def ready(self, status: str) -> None:
        self.status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def set_status(self, status: str) -> None:
        """Send ``STATUS=`` when it changed."""
        if status != self.status:
            self.status = status
            self.send(f"STATUS={status}")

    def tick(self, now: float) -> float:
        """Send ``WATCHDOG=1`` when due; return the time of the next one (0: never)."""
        if not self.watchdog_interval:
            return 0.0
        if now >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_interval
        return self.next_watchdog

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def inherited_sockets(environ: Mapping[str, str] | None = None, first: int = LISTEN_FDS_START) -> list[tuple[str, socket.socket]]:
    """The listening sockets systemd passed to this process, with their names ("" if none).

    Empty when ``$LISTEN_PID`` is not this process.  Raises ValueError when the variables
    or the descriptors are not what the protocol says.
    """
    environ = os.environ if environ is None else environ
    if environ.get("LISTEN_PID", "") != str(os.getpid()):
        return []
    count = environ.get("LISTEN_FDS", "")
    if not count.isascii() or not count.isdigit() or len(count) > 6:
        raise ValueError(f"LISTEN_FDS: expected a number of descriptors, got {count!r}")
    names = environ.get("LISTEN_FDNAMES", "")
    named = names.split(":") if names else []
    if named and len(named) != int(count):
        raise ValueError(f"LISTEN_FDNAMES names {len(named)} sockets, LISTEN_FDS says {count}")
    found: list[tuple[str, socket.socket]] = []
    for index in range(int(count)):
        fd = first + index
        name = named[index] if named else ""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"inherited descriptor {fd} ({name or 'unnamed'}) is not a socket: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ValueError(f"inherited descriptor {fd} ({name or 'unnamed'}) is not a listening stream socket")
        sock.set_inheritable(False)
        sock.setblocking(False)
        found.append((name, sock))
    return found


def match(servers: Sequence[str], inherited: Sequence[tuple[str, socket.socket]]) -> dict[str, socket.socket]:
    """Give each server (by name, in config order) its inherited socket.

    A socket named by ``FileDescriptorName=`` goes to the server of that name; when none
    is named (systemd's default names: the socket unit's, or none at all), they go to the
    servers in config order.  Raises ValueError on a mismatch.
    """
    names = [name for name, _ in inherited]
    if len(inherited) != len(servers):
        raise ValueError(f"systemd passed {len(inherited)} sockets ({':'.join(names) or 'unnamed'}) for {len(servers)} servers")
    if all(_unnamed(name) for name in names):
        return {server: sock for server, (_, sock) in zip(servers, inherited, strict=True)}
    unknown = [name for name in names if name not in servers]
    if unknown:
        raise ValueError(f"systemd passed a socket named {unknown[0]!r}, and no server has that name")
    if len(set(names)) != len(names):
        raise ValueError("systemd passed two sockets with one name")
    return {name: sock for name, sock in inherited}


def _unnamed(name: str) -> bool:
    """Whether ``name`` is one systemd gives when the unit names none."""
    return name in ("", "unknown", "stored", "connection") or name.endswith(".socket")


def clear_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Forget the socket-activation variables (children must not take them for theirs)."""
    environ = os.environ if environ is None else environ
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
