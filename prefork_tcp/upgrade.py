"""USR2: a new master takes over every listening socket and every open connection.

The old master starts the installed program again with its original arguments
(``program()``), in the directory it started in (``working_directory()``), and passes it,
in ``$PREFORK_TCP_UPGRADE`` (``encode`` / ``decode``), the descriptors it inherits: every
listening socket (with its server's name and configured address), the control socket,
the metrics endpoint, and one end of a channel between the two masters (``channel.py``: SUCCESSOR_READY,
HANDED_OVER, FAILED, PARCEL, PARCEL_ACK).  No other descriptor is inherited.

1. The new master reads its configuration, uses each passed socket whose server kept its
   name and address (or, failing that, its address), binds what is new, forks its
   workers, and once they all serve says SUCCESSOR_READY.
2. The old master tells its workers to hand every connection over (RETIRE), as in a
   recycle, and relays the parcels to the new master instead of to workers of its own;
   the new master acknowledges each one once it holds its descriptors and relays it to
   one of its workers.
3. Once the old master has no worker and no parcel left, it tells systemd ``MAINPID=``
   the new master, says HANDED_OVER, and exits; the new master writes the pidfile, takes
   the control socket and the metrics endpoint, and speaks to systemd from then on.

A new master that cannot start says why (FAILED) and exits; the old one logs the reason
and serves on.  The master side of this lives in ``upgrading.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .channel import EOF, NEW_MASTER, OLD_MASTER, Channel, Kind, Message, Truncated, close_all
from .sockets import Listener, parse_address

#: The environment variable that tells a new master it takes over from its parent.
ENV = "PREFORK_TCP_UPGRADE"
#: The version of what is passed and said between the two masters; a new master refuses another.
#: Version 2 adds the metrics endpoint; an old master without one passes version 1, which
#: masters before version 2 understand too (and one with it cannot upgrade to those).
VERSION = 2
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
    #: The metrics endpoint's address and descriptor, if the old master had one.
    metrics: tuple[str, int] | None = None

    @property
    def fds(self) -> list[Any]:
        """Every descriptor passed (what ``decode`` checks, and what ``spawn`` lets through)."""
        planes = [plane[1] for plane in (self.control, self.metrics) if plane]
        return [self.channel, *(p.fd for p in self.listeners), *planes]


def encode(inheritance: Inheritance) -> str:
    return json.dumps(
        {
            "version": VERSION if inheritance.metrics else 1,  # a master without metrics can take version 1
            "master": inheritance.master,
            "channel": inheritance.channel,
            "control": list(inheritance.control) if inheritance.control else None,
            "metrics": list(inheritance.metrics) if inheritance.metrics else None,
            "listeners": [[p.name, p.address, p.fd, p.systemd] for p in inheritance.listeners],
        },
        separators=(",", ":"),
    )


def decode(text: str, parent: int) -> Inheritance:
    """Return what ``text`` (``$PREFORK_TCP_UPGRADE``) says was passed; raise ValueError when
    it is not what a master writes, or when it was written by a process other than ``parent``."""
    try:
        data = json.loads(text)
        version = data.get("version") if isinstance(data, dict) else None
        if version in (1, VERSION):
            master, channel, control, metrics = data["master"], data["channel"], data["control"], data.get("metrics")
            listeners = tuple(PassedSocket(name, address, fd, systemd) for name, address, fd, systemd in data["listeners"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{ENV} is not what a master passes ({type(exc).__name__})") from None
    if version not in (1, VERSION):
        raise ValueError(f"{ENV}: version {version!r}, this program speaks versions 1 and {VERSION}")
    if version == 1 and metrics is not None:
        raise ValueError(f"{ENV}: version 1 passes no metrics endpoint")
    for value, what in ((control, "control is not [path, descriptor]"), (metrics, "metrics is not [address, descriptor]")):
        if value is not None and not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            raise ValueError(f"{ENV}: {what}")
    inheritance = Inheritance(
        master, channel, listeners, (control[0], control[1]) if control else None, (metrics[0], metrics[1]) if metrics else None
    )
    fds = inheritance.fds
    if not all(type(fd) is int and 3 <= fd < _MAX_FD for fd in fds) or len(set(fds)) != len(fds):
        raise ValueError(f"{ENV}: descriptors must be distinct numbers from 3 on")
    if not all(isinstance(p.name, str) and isinstance(p.address, str) and type(p.systemd) is bool for p in listeners):
        raise ValueError(f"{ENV}: a listener is not [name, address, descriptor, systemd]")
    for name, address in [(f"listener {p.name!r}", p.address) for p in listeners] + ([("metrics", metrics[0])] if metrics else []):
        try:
            parse_address(address)
        except ValueError as exc:
            raise ValueError(f"{ENV}: {name}: {exc}") from None
    if type(master) is not int or master != parent:
        raise ValueError(f"{ENV} was set by process {master}, not by this process's parent ({parent})")
    return inheritance


def program() -> list[str]:
    """The command line that started this process: the same interpreter, options and arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


def working_directory() -> str:
    """This process's working directory, by the path it was entered through when that is
    known (``$PWD``): a new master started there sees a release switched by symlink."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD", "")
    try:
        if pwd and os.path.samefile(pwd, cwd):
            return pwd
    except OSError:
        pass
    return cwd


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

    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)
    #: When its workers served and the old master's began handing their connections over (0: not yet).
    handing_over: float = 0.0
    #: HANDED_OVER was sent: the old master exits once the channel has flushed it.
    handed_over: bool = False
    #: Why the new master says it failed (FAILED), if it did.
    cause: str = ""
    #: The old master gave up on it (it did not serve in time, broke the channel) and told it to stop.
    abandoned: bool = False
    #: When it is killed if it has not exited by then (0: not planned).
    kill_at: float = 0.0
    #: It has exited (its last messages are being read).
    exited: bool = False
    #: When its end of the channel closed (0: open): it exits, or something is wrong with it.
    closed_at: float = 0.0

    @property
    def taking(self) -> bool:
        """Whether connections go to it now: it serves, and nothing went wrong."""
        return bool(self.handing_over) and not (self.abandoned or self.exited or self.closed_at or self.channel.broken)


def spawn(
    listeners: list[Listener], control: tuple[str, socket.socket] | None, metrics: tuple[str, socket.socket] | None, directory: str
) -> Successor:
    """Start the installed program in ``directory`` as a new master that inherits
    ``listeners``, the control socket and the metrics endpoint, and no other descriptor;
    return it. Raises OSError when it cannot be started."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    inheritance = Inheritance(
        os.getpid(),
        theirs.fileno(),
        tuple(PassedSocket(lst.name, str(lst.address), lst.sock.fileno(), lst.inherited) for lst in listeners),
        (control[0], control[1].fileno()) if control else None,
        (metrics[0], metrics[1].fileno()) if metrics else None,
    )
    environ = dict(os.environ)
    environ.pop("WATCHDOG_PID", None)  # systemd's watchdog follows MAINPID to the new master
    environ["PWD"] = directory
    environ[ENV] = encode(inheritance)
    try:
        # Its exit is reaped by the master's loop (waitpid(-1)), never through this object.
        process = subprocess.Popen(program(), cwd=directory, env=environ, pass_fds=inheritance.fds, close_fds=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Successor(process.pid, Channel(ours, NEW_MASTER), process=process)


@dataclass(eq=False)
class Predecessor(Peer):
    """The new master's view of the old master, until the new one is in charge."""

    #: Passed listening sockets not taken yet: (name, address) -> (socket, from systemd).
    listeners: dict[tuple[str, str], tuple[socket.socket, bool]] = field(default_factory=dict)
    control: tuple[str, socket.socket] | None = None
    metrics: tuple[str, socket.socket] | None = None
    #: Addresses of passed sockets no server took (a unix socket file there is removed once in charge).
    dropped: list[str] = field(default_factory=list)
    #: Parcels taken whose acknowledgement still waits in the channel's queue: not passed on
    #: yet (if this master died now, the old one would still have them, and nobody else).
    unconfirmed: list[tuple[dict[str, Any], tuple[int, ...]]] = field(default_factory=list)
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
        metrics = (inheritance.metrics[0], _adopt(inheritance.metrics[1])) if inheritance.metrics else None
        return cls(inheritance.master, Channel(_adopt(inheritance.channel), OLD_MASTER), 0, listeners, control, metrics)

    def take_listener(self, name: str, address: str) -> tuple[socket.socket, bool] | None:
        """The passed socket of server ``name`` if it still listens at ``address``, else one
        that listens at ``address`` for a server renamed since (not for port 0: any port
        would do, so a renamed server gets a new one); and whether systemd owns it."""
        taken = self.listeners.pop((name, address), None)
        where = parse_address(address)
        if taken is None and (where.kind == "unix" or where.port != 0):
            renamed = next((key for key in self.listeners if key[1] == address), None)
            taken = self.listeners.pop(renamed) if renamed else None
        return taken

    def close_untaken(self) -> list[str]:
        """Close the passed sockets no server took (the old master keeps its own until it
        exits); return their names. Their unix socket files are this master's to remove
        once it is in charge (``dropped``)."""
        names = [name for name, _ in self.listeners]
        for (_, address), (sock, systemd) in self.listeners.items():
            sock.close()
            if not systemd:
                self.dropped.append(address)
        self.listeners.clear()
        return names

    def confirmed(self) -> list[tuple[dict[str, Any], tuple[int, ...]]]:
        """Take the parcels whose acknowledgements have left (the channel's queue is empty)."""
        taken, self.unconfirmed = self.unconfirmed, []
        return taken

    def report_failure(self, code: int, cause: str) -> None:
        """Tell the old master why this one exits (waits up to 2 s for the channel)."""
        self.channel.send(Kind.FAILED, code=code & 0xFF, cause=cause[:4000])
        deadline = time.monotonic() + _REPORT_TIMEOUT
        while not self.channel.flush() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.channel.close()
        for _, fds in self.confirmed():
            close_all(fds)
        for plane in (self.control, self.metrics):
            if plane is not None:
                plane[1].close()
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
