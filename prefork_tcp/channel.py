"""The channel between the master and one worker, and between an old and a new master
during an upgrade: every message, and both ends of it.

Each worker has one ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair to the master (made by
``workerhandle.fork_worker``), and a new master started by USR2 has one to the old master
(``upgrade.py``).  One packet is one message: a type byte, then a JSON object for the types
that carry fields; a parcel also carries file descriptors (SCM_RIGHTS).

| kind | byte | sent by | fields | fds |
|---|---|---|---|---|
| STOP | ``T`` | master | | graceful stop: finish every connection, exit |
| QUIT | ``Q`` | master | | quick stop |
| RETIRE | ``H`` | master | | hand every connection over, then exit |
| REOPEN_LOGS | ``O`` | master | | reopen log files (USR1) |
| CLOSE | ``C`` | master | id, uuid | close that connection if it is yours |
| CLOSE_RESULT | ``k`` | master | id, found | the answer to a worker's CLOSE_REQUEST |
| READY | ``R`` | worker | | the application waits for its first request |
| BUDGET_LOW | ``L`` | worker | | three quarters of max_jobs handled: start a successor |
| BUDGET_SPENT | ``J`` | worker | | max_jobs handled: handing every connection over now |
| APP_FAILED | ``X`` | worker | | the application raised: handing the other connections over, then exit |
| SLOW | ``W`` | worker | | an event runs longer than ``slow_event``: its other connections move; send none here for a while |
| CLOSED | ``c`` | worker | id, found | the answer to CLOSE |
| CLOSE_REQUEST | ``K`` | worker | id, uuid | close this uuid wherever it lives |
| FAILED | ``E`` | worker, new master | code, cause | why it could not start |
| SUCCESSOR_READY | ``U`` | new master | | its workers serve: hand every connection over |
| HANDED_OVER | ``D`` | old master | | every connection was handed over: the new master is in charge |
| PARCEL | ``A`` | master, worker, old master | uuid, server, remote, eof, connected, input, output, session | socket (+ payload memfd) |
| PARCEL_ACK | ``a`` | master, worker, new master | uuid, ok | a parcel was taken (ok) or must go elsewhere |

Nothing is dropped: ``Channel.send`` queues what the socket cannot take yet, and the owner
watches the socket for writability while ``pending`` (the master in its selector, a
worker in its epoll set).  ``Channel.receive`` validates every message against the
table; what does not match raises ``ChannelError`` (the master kills a worker that sends
garbage), and a parcel whose descriptors did not all arrive (the receiver ran out of
descriptors: ``MSG_CTRUNC``) raises ``Truncated`` after closing those that did, so the
parcel can be refused and sent again.
"""

from __future__ import annotations

import array
import enum
import errno
import json
import os
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

#: Largest packet (a failing worker's traceback is the biggest message).
MAX_MESSAGE = 65536
#: Most descriptors one message carries (a parcel: the socket and its payload).
MAX_FDS = 2
_INT_SIZE = array.array("i").itemsize
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * _INT_SIZE)
#: Socket buffer asked for each end: room for a few hundred messages before queueing.
BUFFER = 1 << 20

MASTER, WORKER, OLD_MASTER, NEW_MASTER = "master", "worker", "old master", "new master"
_NO_FIELDS: dict[str, type] = {}
#: Send errors that mean the other end is gone (others, such as ENOBUFS, pass).
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF})


class Kind(enum.Enum):
    """Every message type: its byte, who sends it, and its fields with their types."""

    STOP = (b"T", (MASTER,), _NO_FIELDS)
    QUIT = (b"Q", (MASTER,), _NO_FIELDS)
    RETIRE = (b"H", (MASTER,), _NO_FIELDS)
    REOPEN_LOGS = (b"O", (MASTER,), _NO_FIELDS)
    CLOSE = (b"C", (MASTER,), {"id": int, "uuid": str})
    CLOSE_RESULT = (b"k", (MASTER,), {"id": int, "found": bool})
    READY = (b"R", (WORKER,), _NO_FIELDS)
    BUDGET_LOW = (b"L", (WORKER,), _NO_FIELDS)
    BUDGET_SPENT = (b"J", (WORKER,), _NO_FIELDS)
    APP_FAILED = (b"X", (WORKER,), _NO_FIELDS)
    SLOW = (b"W", (WORKER,), _NO_FIELDS)
    CLOSED = (b"c", (WORKER,), {"id": int, "found": bool})
    CLOSE_REQUEST = (b"K", (WORKER,), {"id": int, "uuid": str})
    FAILED = (b"E", (WORKER, NEW_MASTER), {"code": int, "cause": str})
    SUCCESSOR_READY = (b"U", (NEW_MASTER,), _NO_FIELDS)
    HANDED_OVER = (b"D", (OLD_MASTER,), _NO_FIELDS)
    PARCEL = (
        b"A",
        (MASTER, WORKER, OLD_MASTER),
        {"uuid": str, "server": str, "remote": str, "eof": bool, "connected": bool, "input": int, "output": int, "session": int},
    )
    PARCEL_ACK = (b"a", (MASTER, WORKER, NEW_MASTER), {"uuid": str, "ok": bool})

    def __init__(self, code: bytes, senders: tuple[str, ...], fields: dict[str, type]) -> None:
        self.code = code
        self.senders = senders
        self.fields = fields


_BY_CODE = {kind.code: kind for kind in Kind}


@dataclass(frozen=True)
class Message:
    """One message received: its kind, its fields, the descriptors that came with it (now ours)."""

    kind: Kind
    fields: dict[str, Any]
    fds: tuple[int, ...] = ()

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


#: What ``Channel.receive`` returns once the other end has closed the channel.
EOF = Message(Kind.STOP, {})


class ChannelError(Exception):
    """A message that does not match the table (its descriptors are closed already)."""


class Truncated(ChannelError):
    """A valid message whose descriptors did not all arrive; ``message`` has its fields."""

    def __init__(self, reason: str, message: Message) -> None:
        super().__init__(reason)
        self.message = message


def encode(kind: Kind, fields: dict[str, Any]) -> bytes:
    """Return the packet for ``kind`` with ``fields`` (checked against the table)."""
    if set(fields) != set(kind.fields):
        raise TypeError(f"{kind.name} takes fields {sorted(kind.fields)}, got {sorted(fields)}")
    if not kind.fields:
        return kind.code
    return kind.code + json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def decode(packet: bytes, fds: list[int], flags: int, sender: str) -> Message:
    """Return the message in ``packet`` sent by ``sender`` (MASTER, WORKER, OLD_MASTER, NEW_MASTER).

    Raises ``ChannelError`` (or ``Truncated``) after closing ``fds``.
    """
    try:
        message = _decode(packet, fds, flags, sender)
    except ChannelError:
        close_all(fds)
        raise
    if (flags & socket.MSG_CTRUNC) or len(fds) != _fds_expected(message):
        close_all(fds)
        reason = (
            "descriptors lost in transit (the receiver is out of file descriptors)"
            if flags & socket.MSG_CTRUNC
            else f"{len(fds)} descriptors attached"
        )
        if message.kind is Kind.PARCEL:
            raise Truncated(reason, message)
        raise ChannelError(f"{message.kind.name}: {reason}")
    return message


def _decode(packet: bytes, fds: list[int], flags: int, sender: str) -> Message:
    if flags & socket.MSG_TRUNC:
        raise ChannelError(f"a message longer than {MAX_MESSAGE} bytes")
    kind = _BY_CODE.get(packet[:1])
    if kind is None:
        raise ChannelError(f"unknown message type {packet[:1]!r}")
    if sender not in kind.senders:
        raise ChannelError(f"{kind.name} is not sent by the {sender}")
    body = packet[1:]
    if not kind.fields:
        if body:
            raise ChannelError(f"{kind.name} takes no body")
        return Message(kind, {}, tuple(fds))
    try:
        fields = json.loads(body)
    except Exception as exc:  # ValueError, RecursionError, UnicodeDecodeError: all garbage
        raise ChannelError(f"{kind.name}: unreadable body ({type(exc).__name__})") from None
    if not isinstance(fields, dict) or set(fields) != set(kind.fields):
        raise ChannelError(f"{kind.name}: expected fields {sorted(kind.fields)}")
    for name, expected in kind.fields.items():
        value = fields[name]
        if type(value) is not expected or (isinstance(value, int) and expected is int and not 0 <= value < 1 << 62):
            raise ChannelError(f"{kind.name}: field {name} is not a valid {expected.__name__}")
    return Message(kind, fields, tuple(fds))


def _fds_expected(message: Message) -> int:
    if message.kind is not Kind.PARCEL:
        return 0
    return 2 if message["input"] or message["output"] or message["session"] else 1


def close_all(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One end of a channel, non-blocking: sends queue, receives validate."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        """``peer`` is who is at the other end: MASTER (in a worker), WORKER (in the master),
        NEW_MASTER or OLD_MASTER (between two masters during an upgrade)."""
        self.sock = sock
        self.peer = peer
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)
            except OSError:
                pass
        #: Packets the socket could not take yet, oldest first.
        self.queue: deque[bytes] = deque()
        #: The other end is gone (a send failed with something other than "full").
        self.broken = False

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> bool:
        """Whether messages wait for the socket to become writable."""
        return bool(self.queue)

    def send(self, kind: Kind, *, urgent: bool = False, **fields: Any) -> None:
        """Send a message without descriptors; queue it if the socket is full (``urgent``:
        ahead of what is queued). Never dropped unless the other end is gone."""
        packet = encode(kind, fields)
        if self.queue:
            if urgent:
                self.queue.appendleft(packet)
            else:
                self.queue.append(packet)
            return
        if not self._send_packet(packet):
            self.queue.append(packet)

    def send_with_fds(self, kind: Kind, fields: dict[str, Any], fds: list[int]) -> bool:
        """Send a message with descriptors now; False if it must wait (socket full, or
        messages queued before it). The caller keeps its descriptors either way."""
        if self.queue or self.broken:
            return False
        packet = encode(kind, fields)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([packet], ancillary)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.broken = exc.errno in _GONE
            return False
        return True

    def flush(self) -> bool:
        """Send what is queued, as far as the socket takes it; return True once nothing is left."""
        while self.queue:
            if not self._send_packet(self.queue[0]):
                return False
            self.queue.popleft()
        return True

    def _send_packet(self, packet: bytes) -> bool:
        """Return False only when the socket is full."""
        if self.broken:
            return True  # nobody to send to: done with it
        try:
            self.sock.send(packet)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno not in _GONE:
                return False  # short of memory or buffers for now: like full
            self.broken = True
        return True

    def receive(self) -> Message | None:
        """Return the next message, ``EOF`` once the other end closed, None if none is waiting.

        Raises ``ChannelError`` for a message that does not match the table.
        """
        try:
            # Close-on-exec, like every descriptor Python opens: a program the application
            # runs, or a new master started by an upgrade, must not inherit a connection.
            packet, ancillary, flags, _ = self.sock.recvmsg(MAX_MESSAGE, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
            flags &= ~socket.MSG_CMSG_CLOEXEC  # Linux echoes it back
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return EOF
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(data[: len(data) - len(data) % _INT_SIZE])
                fds.extend(received)
        if not packet and not fds and not flags:
            return EOF
        return decode(packet, fds, flags, self.peer)

    def close(self) -> None:
        self.sock.close()
