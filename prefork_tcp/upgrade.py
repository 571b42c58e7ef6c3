"""USR2: a new master takes over every listening socket and every open connection.

The old master starts the installed program again with its original arguments
(``program()``), and passes it, in ``$PREFORK_TCP_UPGRADE`` (``encode`` / ``decode``), the
descriptors it inherits: every listening socket (with its server's name and configured
address), the control socket, and one end of a channel between the two masters
(``channel.py``: SUCCESSOR_READY, HANDED_OVER, FAILED, PARCEL, PARCEL_ACK).

1. The new master reads its configuration, uses each passed socket whose server kept its
   name and address (and binds what is new), forks its workers, and once they all serve
   says SUCCESSOR_READY.
2. The old master tells its workers to hand every connection over (RETIRE), as in a
   recycle, and relays the parcels to the new master instead of to workers of its own;
   the new master acknowledges each one once it holds its descriptors and relays it to
   one of its workers.
3. Once the old master has no worker and no parcel left, it says HANDED_OVER, tells
   systemd ``MAINPID=`` the new master, and exits; the new master writes the pidfile,
   takes the control socket and speaks to systemd from then on.

A new master that cannot start says why (FAILED) and exits; the old one logs the reason
and serves on.  The master side of this lives in ``upgrading.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

from .channel import EOF, NEW_MASTER, OLD_MASTER, Channel, Kind, Message, Truncated
from .sockets import Listener

#: The environment variable that tells a new master it takes over from its parent.
ENV = "PREFORK_TCP_UPGRADE"
#: Descriptors above this are not ones a master passes (a sanity bound for ``decode``).
_MAX_FD = 1 << 20
#: How long a failing new master tries to tell the old one why.
_REPORT_TIMEOUT = 2.0

log = logging.getLogger("prefork_tcp.master")


@dataclass(frozen=True)
class PassedSocket:
    """One listening socket passed on: its server's name and configured address."""

    name: str
    address: str
    fd: int
    #: systemd passed it to the old master (socket activation): its unix socket file is systemd's.
    systemd: bool = False


@dataclass(frozen=True)
class Inheritance:
    """What an old master passes to the new one."""

    #: The old master's pid (the new master's parent).
    master: int
    #: The new master's end of the channel between the two.
    channel: int
    listeners: tuple[PassedSocket, ...] = ()
    #: The control socket's path and descriptor, if the old master had one.
    control: tuple[str, int] | None = None


def encode(inheritance: Inheritance) -> str:
    return json.dumps(
        {
            "master": inheritance.master,
            "channel": inheritance.channel,
            "control": list(inheritance.control) if inheritance.control else None,
            "listeners": [[p.name, p.address, p.fd, p.systemd] for p in inheritance.listeners],
        },
        separators=(",", ":"),
    )


def decode(text: str, parent: int) -> Inheritance:
    """Return what ``text`` (``$PREFORK_TCP_UPGRADE``) says was passed; raise ValueError when
    it is not what a master writes, or when it was written by a process other than ``parent``."""
    try:
        data = json.loads(text)
        master, channel = data["master"], data["channel"]
        control = data["control"]
        listeners = tuple(PassedSocket(name, address, fd, systemd) for name, address, fd, systemd in data["listeners"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{ENV} is not what a master passes ({type(exc).__name__})") from None
    fds = [channel, *(p.fd for p in listeners)]
    if control is not None:
        if not (isinstance(control, list) and len(control) == 2 and isinstance(control[0], str)):
            raise ValueError(f"{ENV}: control is not [path, descriptor]")
        fds.append(control[1])
    if not all(type(fd) is int and 3 <= fd < _MAX_FD for fd in fds) or len(set(fds)) != len(fds):
        raise ValueError(f"{ENV}: descriptors must be distinct numbers from 3 on")
    if not all(isinstance(p.name, str) and isinstance(p.address, str) and type(p.systemd) is bool for p in listeners):
        raise ValueError(f"{ENV}: a listener is not [name, address, descriptor, systemd]")
    if type(master) is not int or master != parent:
        raise ValueError(f"{ENV} was set by process {master}, not by this process's parent ({parent})")
    return Inheritance(master, channel, listeners, (control[0], control[1]) if control else None)


def program() -> list[str]:
    """The command line that started this process: the same interpreter, options and arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


@dataclass(eq=False)
class Peer:
    """The other master during an upgrade: its pid and the channel to it."""

    pid: int
    channel: Channel
    #: The selector events its channel is registered for (0: not watched).
    watching: int = 0

    def messages(self) -> Iterator[Message]:
        """Yield the messages waiting on the channel, then ``EOF`` once the other end closed
        it. A parcel whose descriptors did not all arrive is refused (it is sent again)."""
        while True:
            try:
                message = self.channel.receive()
            except Truncated as exc:
                log.warning("could not take connection %s from master %d: %s", exc.message["uuid"], self.pid, exc)
                self.channel.send(Kind.PARCEL_ACK, uuid=exc.message["uuid"], ok=False)
                continue
            if message is None:
                return
            yield message
            if message is EOF:
                return


@dataclass(eq=False)
class Successor(Peer):
    """The old master's view of the new master it started."""

    started: float = field(default_factory=time.monotonic)
    #: The new master's workers serve: the old master's workers hand their connections over.
    handing_over: bool = False
    #: HANDED_OVER was sent: the old master exits once the channel has flushed it.
    handed_over: bool = False
    #: Why the new master says it failed (FAILED), if it did.
    cause: str = ""
    #: When the old master gave up waiting and told it to stop (0: not yet).
    abandoned: float = 0.0


def spawn(listeners: list[Listener], control: tuple[str, socket.socket] | None) -> Successor:
    """Start the installed program as a new master that inherits ``listeners`` and the
    control socket; return it. Raises OSError when it cannot be started."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    inheritance = Inheritance(
        os.getpid(),
        theirs.fileno(),
        tuple(PassedSocket(lst.name, str(lst.address), lst.sock.fileno(), lst.inherited) for lst in listeners),
        (control[0], control[1].fileno()) if control else None,
    )
    fds = [theirs.fileno(), *(p.fd for p in inheritance.listeners), *([inheritance.control[1]] if inheritance.control else [])]
    environ = dict(os.environ)
    environ.pop("WATCHDOG_PID", None)  # systemd's watchdog follows MAINPID to the new master
    environ[ENV] = encode(inheritance)
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        pid = os.posix_spawn(sys.executable, program(), environ)
    except BaseException:
        ours.close()
        raise
    finally:
        for fd in fds[1:]:
            os.set_inheritable(fd, False)
        theirs.close()
    return Successor(pid, Channel(ours, NEW_MASTER))


@dataclass(eq=False)
class Predecessor(Peer):
    """The new master's view of the old master, until the new one is in charge."""

    #: Passed listening sockets not taken yet: (name, address) -> (socket, from systemd).
    listeners: dict[tuple[str, str], tuple[socket.socket, bool]] = field(default_factory=dict)
    control: tuple[str, socket.socket] | None = None
    #: This master took charge: the old one is gone or going.
    in_charge: bool = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Predecessor | None:
        """The old master this process takes over from (None: not started by an upgrade).

        Removes the variable, so the workers and a later upgrade do not take it for theirs.
        Raises ValueError when it is set but wrong.
        """
        environ = os.environ if environ is None else environ
        text = environ.pop(ENV, "")
        if not text:
            return None
        inheritance = decode(text, os.getppid())
        listeners = {(p.name, p.address): (_adopt(p.fd), p.systemd) for p in inheritance.listeners}
        control = (inheritance.control[0], _adopt(inheritance.control[1])) if inheritance.control else None
        return cls(inheritance.master, Channel(_adopt(inheritance.channel), OLD_MASTER), 0, listeners, control)

    def take_listener(self, name: str, address: str) -> tuple[socket.socket, bool] | None:
        """The passed socket of server ``name`` if it still listens at ``address``, and
        whether systemd owns it."""
        return self.listeners.pop((name, address), None)

    def close_untaken(self) -> list[str]:
        """Close the passed sockets no server took (the old master keeps its own); return their names."""
        names = [name for name, _ in self.listeners]
        for sock, _ in self.listeners.values():
            sock.close()
        self.listeners.clear()
        return names

    def report_failure(self, code: int, cause: str) -> None:
        """Tell the old master why this one exits (waits up to 2 s for the channel)."""
        self.channel.send(Kind.FAILED, code=code & 0xFF, cause=cause[-4000:])
        deadline = time.monotonic() + _REPORT_TIMEOUT
        while not self.channel.flush() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.channel.close()
        if self.control is not None:
            self.control[1].close()
        self.close_untaken()


def _adopt(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"{ENV}: descriptor {fd} is not a socket: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


class FirstError(logging.Handler):
    """Remembers the first error logged (the cause; later ones tend to be its consequences):
    a failing new master sends it to the old one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.message:
            try:
                self.message = record.getMessage()
            except Exception:  # a bad format string must not hide the exit code
                self.message = str(record.msg)
