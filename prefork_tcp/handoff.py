"""Handing a live connection from one worker to another, through the master.

A parcel is one PARCEL message (``channel.py``) with the connection's socket attached;
bytes read but not yet delivered and output not yet sent travel in a memfd attached
beside it, so a message stays small however much a slow client has pending.

Every parcel is acknowledged (PARCEL_ACK), and nobody lets go of a connection before
the next holder has it:

1. the retiring worker sends the parcel and keeps its socket; the master answers
   ``ok`` once it holds the descriptors (the worker then closes its copies), or not
   ``ok`` when they did not all arrive (the worker keeps the connection and tries again);
2. the master keeps its copies until a worker answers ``ok`` for the adopted
   connection; a refusal (that worker ran out of descriptors) or the worker's death
   before answering puts the parcel back in line for another worker.
"""

from __future__ import annotations

import bisect
import os
import pickle
import stat
from dataclasses import dataclass, field
from typing import Any

from .channel import Channel, Kind, close_all


@dataclass(frozen=True)
class Parcel:
    """Everything a worker needs to carry on serving a connection it did not accept."""

    uuid: str
    server: str
    remote: str
    eof: bool = False
    pending_input: bytes = b""
    unsent_output: bytes = b""
    #: Whether CONNECTED was delivered (False: the new owner delivers it first).
    connected: bool = True
    #: ``TcpWorker.session``, pickled (empty: no session).
    session: bytes = b""


class SessionError(ValueError):
    """A connection's session cannot be pickled; ``key`` names the first value that fails."""

    def __init__(self, key: str, cause: Exception) -> None:
        super().__init__(f"its session cannot be pickled: key {key!r}: {type(cause).__name__}: {cause}")
        self.key = key


def pickle_session(session: dict[str, Any]) -> bytes:
    """Return ``session`` pickled, or raise ``SessionError`` naming the key that fails."""
    try:
        return pickle.dumps(session, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        for key, value in session.items():
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except Exception as cause:
                raise SessionError(str(key), cause) from None
        raise SessionError("(the keys)", exc) from None


def unpickle_session(data: bytes) -> dict[str, Any]:
    """Return the session a parcel carries (raises what unpickling raises)."""
    session = pickle.loads(data)
    if not isinstance(session, dict):
        raise ValueError(f"a session is a dict, not {type(session).__name__}")
    return session


def pack(parcel: Parcel, sock_fd: int) -> tuple[dict[str, Any], list[int]]:
    """Return a PARCEL message's fields and the fds to attach; the caller closes the payload
    fd (``fds[1:]``) after sending. Raises OSError when no memfd can be made."""
    fields = {
        "uuid": parcel.uuid,
        "server": parcel.server,
        "remote": parcel.remote,
        "eof": parcel.eof,
        "connected": parcel.connected,
        "input": len(parcel.pending_input),
        "output": len(parcel.unsent_output),
        "session": len(parcel.session),
    }
    fds = [sock_fd]
    if parcel.pending_input or parcel.unsent_output or parcel.session:
        payload = os.memfd_create("prefork-tcp-parcel", os.MFD_CLOEXEC)
        try:
            _write_all(payload, parcel.pending_input + parcel.unsent_output + parcel.session)
        except BaseException:
            os.close(payload)
            raise
        fds.append(payload)
    return fields, fds


def unpack(fields: dict[str, Any], fds: tuple[int, ...]) -> Parcel:
    """Return the parcel a PARCEL message carries (its socket is ``fds[0]``).

    Reads and closes the payload fd; raises OSError or ValueError if the payload is short.
    """
    pending = output = session = b""
    if len(fds) > 1:
        try:
            size = _payload_size(fields)
            data = _read_all(fds[1], size)
        finally:
            os.close(fds[1])
        if len(data) != size:
            raise ValueError(f"parcel payload of {len(data)} bytes, expected {size}")
        output_end = fields["input"] + fields["output"]
        pending, output, session = data[: fields["input"]], data[fields["input"] : output_end], data[output_end:]
    return Parcel(fields["uuid"], fields["server"], fields["remote"], fields["eof"], pending, output, fields["connected"], session)


def _payload_size(fields: dict[str, Any]) -> int:
    return int(fields["input"] + fields["output"] + fields["session"])


def check(fields: dict[str, Any], fds: tuple[int, ...]) -> str:
    """Return what is wrong with a parcel a worker sent ("" if nothing): its first
    descriptor must be a socket, its payload as long as it says."""
    try:
        if not stat.S_ISSOCK(os.fstat(fds[0]).st_mode):
            return "its descriptor is not a socket"
        if len(fds) > 1 and os.fstat(fds[1]).st_size < _payload_size(fields):
            return "its payload is shorter than it says"
    except OSError as exc:
        return f"its descriptors cannot be inspected: {exc.strerror}"
    return ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


@dataclass(order=True)
class _Entry:
    seq: int
    fields: dict[str, Any] = field(compare=False)
    fds: tuple[int, ...] = field(compare=False)
    #: Workers that refused it lately (out of descriptors): tried last.
    refused: set[int] = field(default_factory=set, compare=False)


class Relay:
    """The master's side: parcels wait here, in order, until a live worker adopts them.

    A parcel's descriptors stay open in the master until a worker acknowledges it, so a
    connection is never lost while no worker can take it yet.
    """

    def __init__(self) -> None:
        self.waiting: list[_Entry] = []
        #: uuid -> (pid of the worker it was sent to, the parcel), until that worker answers.
        self.in_flight: dict[str, tuple[int, _Entry]] = {}
        self._seq = 0
        #: Parcels adopted so far (``prefork_tcp_handoffs_total``).
        self.delivered = 0

    def add(self, fields: dict[str, Any], fds: tuple[int, ...]) -> None:
        """Take a parcel a worker handed over (its descriptors are now the relay's)."""
        self._seq += 1
        self.waiting.append(_Entry(self._seq, fields, fds))

    def deliver(self, targets: list[tuple[int, Channel, int]]) -> int:
        """Send waiting parcels to ``(pid, channel, connections)`` targets, fewest connections
        first, a worker that refused a parcel last; return how many were sent."""
        if not targets or not self.waiting:
            return 0
        load = {pid: count for pid, _, count in targets}
        channels = {pid: channel for pid, channel, _ in targets}
        full: set[int] = set()
        remaining: list[_Entry] = []
        for entry in self.waiting:
            if remaining:  # keep order from the first parcel that could not go
                remaining.append(entry)
                continue
            candidates = sorted((pid for pid in load if pid not in full), key=lambda pid: (pid in entry.refused, load[pid]))
            for pid in candidates:
                if channels[pid].send_with_fds(Kind.PARCEL, entry.fields, list(entry.fds)):
                    self.in_flight[entry.fields["uuid"]] = (pid, entry)
                    load[pid] += 1
                    break
                full.add(pid)
            else:
                remaining.append(entry)
        sent = len(self.waiting) - len(remaining)
        self.waiting = remaining
        return sent

    def acknowledged(self, pid: int, uuid: str, ok: bool) -> bool:
        """A worker answered for a parcel; return False if it had not been sent that one."""
        flight = self.in_flight.get(uuid)
        if flight is None or flight[0] != pid:
            return False
        del self.in_flight[uuid]
        entry = flight[1]
        if ok:
            self.delivered += 1
            close_all(entry.fds)
        else:
            if len(entry.refused) >= 8:
                entry.refused.clear()
            entry.refused.add(pid)
            bisect.insort(self.waiting, entry)
        return True

    def gone(self, pid: int) -> None:
        """A worker exited: the parcels it did not acknowledge go back in line."""
        for uuid, (owner, entry) in list(self.in_flight.items()):
            if owner == pid:
                del self.in_flight[uuid]
                bisect.insort(self.waiting, entry)

    def holds(self, uuid: str) -> bool:
        """Whether a parcel of connection ``uuid`` is here already."""
        return uuid in self.in_flight or any(entry.fields["uuid"] == uuid for entry in self.waiting)

    def __len__(self) -> int:
        return len(self.waiting) + len(self.in_flight)

    def close(self) -> None:
        """Close the connections no worker took (the whole server is stopping)."""
        for entry in self.waiting:
            close_all(entry.fds)
        for _, entry in self.in_flight.values():
            close_all(entry.fds)
        self.waiting.clear()
        self.in_flight.clear()
