"""Applications that misbehave towards the server itself, for tests/test_faults.py.

Each one is the recorder (``recorder.py``: every event recorded, the same commands) plus
one command that attacks the worker's own plumbing from inside the worker process:

- ``garbage_channel``: DATA ``garbage`` writes malformed messages on the worker's channel
  to the master (the AF_UNIX SOCK_SEQPACKET socket among the process's descriptors).
- ``scribble_scoreboard``: DATA ``scribble`` writes random 64-bit values into every field
  of every slot of the shared scoreboard (found through ``gc``: ``SlotWriter.ints``).
"""

from __future__ import annotations

import gc
import os
import random
import socket

from recorder import _data, _record

from prefork_tcp import TcpEvent, TcpWorker

#: What ``garbage`` writes on the channel, in order: a close answer that is not JSON,
#: bytes that are no message at all, and close answers of the wrong JSON shape.
GARBAGE = [b"c{not json", b"\xff" * 100, b"c[]", b'c{"id": "x"}', b"K{not json"]


def _run(worker: TcpWorker, commands: dict) -> None:
    with open(os.environ["RECORDER_LOG"], "a", encoding="utf-8") as fh:
        while (request := worker.wait_request()) is not None:
            _record(fh, request)
            if request.event is TcpEvent.CONNECTED:
                worker.read()
            elif request.event is TcpEvent.DATA:
                action = commands.get(request.body.rstrip(b"\r\n"))
                if action is None:
                    _data(worker, request, fh)
                else:
                    worker.respond(action())


def _channel() -> socket.socket:
    """The worker's channel to the master: its only AF_UNIX SOCK_SEQPACKET socket."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket (or already closed: listdir's own descriptor)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET:
            found.append(sock)
        else:
            sock.close()
    if len(found) != 1:
        raise RuntimeError(f"expected one SEQPACKET channel, found {len(found)}")
    return found[0]


def _send_garbage() -> bytes:
    channel = _channel()
    try:  # the dup shares the channel's non-blocking mode: leave it as it is
        for message in GARBAGE:
            channel.send(message)
    finally:
        channel.close()
    return b"sent\r\n"


def garbage_channel(worker: TcpWorker) -> None:
    """The recorder, plus ``garbage``: write malformed messages to the master."""
    _run(worker, {b"garbage": _send_garbage})


def _scribble() -> bytes:
    from prefork_tcp.scoreboard import SlotWriter

    writers = [obj for obj in gc.get_objects() if isinstance(obj, SlotWriter)]
    if not writers:
        raise RuntimeError("no SlotWriter found")
    ints = writers[0].ints
    slots_end = getattr(writers[0], "used_index", len(ints))  # the field after the slots is not a slot
    rng = random.Random(1234)
    for index in range(slots_end):
        ints[index] = rng.getrandbits(64) | (1 << 62)  # large, never a valid state or count
    return b"scribbled\r\n"


def scribble_scoreboard(worker: TcpWorker) -> None:
    """The recorder, plus ``scribble``: fill the whole shared scoreboard with garbage."""
    _run(worker, {b"scribble": _scribble})
