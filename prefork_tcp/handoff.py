"""Handing a live connection from a retiring worker to another one, through the master.

A parcel is one SEQPACKET message on a worker's channel: ``A`` + JSON (uuid, server,
remote address, EOF seen, byte counts) with the connection's socket attached by
SCM_RIGHTS.  Bytes read but not yet delivered and output not yet sent travel in a
memfd attached beside the socket, so a message stays small however much a slow
client has pending.
"""

from __future__ import annotations

import array
import json
import os
import socket
from dataclasses import dataclass

MSG_PARCEL = b"A"
#: Most file descriptors one channel message carries (socket and payload).
MAX_FDS = 2
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
#: Largest channel message (a failing worker's traceback is the biggest).
MAX_MESSAGE = 65536


@dataclass(frozen=True)
class Parcel:
    """Everything a worker needs to carry on serving a connection it did not accept."""

    uuid: str
    server: str
    remote: str
    eof: bool = False
    pending_input: bytes = b""
    unsent_output: bytes = b""


def pack(parcel: Parcel, sock_fd: int) -> tuple[bytes, list[int]]:
    """Return the channel message for ``parcel`` and the fds to attach (the caller closes the payload fd)."""
    meta = {"uuid": parcel.uuid, "server": parcel.server, "remote": parcel.remote, "eof": parcel.eof,
            "input": len(parcel.pending_input), "output": len(parcel.unsent_output)}
    fds = [sock_fd]
    if parcel.pending_input or parcel.unsent_output:
        payload = os.memfd_create("prefork-tcp-parcel", os.MFD_CLOEXEC)
        _write_all(payload, parcel.pending_input + parcel.unsent_output)
        fds.append(payload)
    return MSG_PARCEL + json.dumps(meta).encode(), fds


def unpack(message: bytes, fds: list[int]) -> tuple[Parcel, int]:
    """Return the parcel in ``message`` and its socket fd; closes the payload fd."""
    meta = json.loads(message[len(MSG_PARCEL):])
    pending = output = b""
    if len(fds) > 1:
        try:
            data = _read_all(fds[1], meta["input"] + meta["output"])
        finally:
            os.close(fds[1])
        pending, output = data[:meta["input"]], data[meta["input"]:]
    return Parcel(meta["uuid"], meta["server"], meta["remote"], meta["eof"], pending, output), fds[0]


def send(channel: socket.socket, message: bytes, fds: list[int]) -> None:
    """Send one message with ``fds`` attached (raises BlockingIOError when the channel is full)."""
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        channel.sendmsg([message], ancillary)
    else:
        channel.send(message)


def receive(channel: socket.socket) -> tuple[bytes, list[int]] | None:
    """Return the next message and its attached fds; b"" at EOF; None when nothing is waiting."""
    try:
        message, ancillary, _flags, _ = channel.recvmsg(MAX_MESSAGE, _ANCILLARY)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b"", []
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % received.itemsize])
            fds.extend(received)
    return message, fds


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Relay:
    """The master's side: parcels wait here until a live worker's channel takes them.

    Order is kept, and a parcel's file descriptors stay open in the master until it is
    delivered, so a connection is never lost while no worker can take it yet.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[bytes, list[int]]] = []

    def add(self, message: bytes, fds: list[int]) -> None:
        self.waiting.append((message, fds))

    def deliver(self, targets: list[tuple[socket.socket, int]]) -> int:
        """Send waiting parcels to ``(channel, connections)`` targets, fewest connections first.

        Return how many were delivered; the rest wait for the next call.
        """
        if not targets or not self.waiting:
            return 0
        load = {channel: count for channel, count in targets}
        full: set[socket.socket] = set()
        remaining: list[tuple[bytes, list[int]]] = []
        for message, fds in self.waiting:
            if remaining or not self._send_one(message, fds, load, full):
                remaining.append((message, fds))  # keep order from here on
        delivered = len(self.waiting) - len(remaining)
        self.waiting = remaining
        return delivered

    @staticmethod
    def _send_one(message: bytes, fds: list[int], load: dict[socket.socket, int], full: set[socket.socket]) -> bool:
        while candidates := [c for c in load if c not in full]:
            channel = min(candidates, key=load.__getitem__)
            try:
                send(channel, message, fds)
            except OSError:  # full (EAGAIN) or gone: another worker may take it
                full.add(channel)
                continue
            for fd in fds:
                os.close(fd)
            load[channel] += 1
            return True
        return False

    def close(self) -> None:
        """Close the connections no worker could take (the whole server is stopping)."""
        for _, fds in self.waiting:
            for fd in fds:
                os.close(fd)
        self.waiting.clear()
