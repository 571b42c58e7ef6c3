#!/usr/bin/env python3
"""The worker's Python cost per PING, without the kernel: the real event loop and ping
example, driven by fake sockets whose calls are C built-ins that do nothing.

Each round the fake epoll reports --connections readable connections, each of which
reads ``PING\\r\\n``; the ping example answers every one, and the answers are "sent" by
``len``. After --rounds rounds the loop is told to stop, as the master would.

    python3 scripts/hotpath.py [--connections 2] [--rounds 200000]
    python3 scripts/hotpath.py --callgrind     # instructions per request (needs valgrind)

Timing (the default) is as noisy as the machine. ``--callgrind`` runs this script twice
under valgrind (few and many rounds) and reports the difference in instructions per
request: the same on every run, so it tells apart changes of a few percent. Under
redis-benchmark ``-P 1 -c 50`` a poll returns about two connections, hence the default.
"""

from __future__ import annotations

import argparse
import itertools
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefork_tcp import implementation  # noqa: E402
from prefork_tcp.api import TcpWorker  # noqa: E402
from prefork_tcp.channel import Kind, encode  # noqa: E402
from prefork_tcp.connection import Connection  # noqa: E402
from prefork_tcp.examples.ping import main as ping_main  # noqa: E402
from prefork_tcp.framing import make_framer  # noqa: E402
from prefork_tcp.signals import SignalPipe  # noqa: E402
from prefork_tcp.worker import Worker  # noqa: E402

FIRST_FD = 100_000  # fake descriptors, far above any real one


class FakeSocket:
    """recv() always has ``pipeline`` PINGs; send() takes everything. Both are C calls."""

    __slots__ = ("recv", "send", "_fd")

    def __init__(self, fd: int, read_size: int, pipeline: int = 1) -> None:
        self.recv = {read_size: b"PING\r\n" * pipeline}.get
        self.send = len
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        pass


class FakeEpoll:
    """poll() reports the same readable connections for ``rounds`` rounds, then the channel."""

    def __init__(self, ready: list[tuple[int, int]], rounds: int, channel_fd: int) -> None:
        batches = itertools.chain(itertools.repeat(ready, rounds), itertools.repeat([(channel_fd, select.EPOLLIN)]))
        self.poll = lambda timeout=-1, _next=batches.__next__: _next()


def run(connections: int, rounds: int, pipeline: int = 1) -> tuple[float, int]:
    """Serve ``connections * rounds * pipeline`` PINGs; return the CPU seconds it took and the events handled."""
    channel, master_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # As the default config runs it: no exec_ttl, so no per-event scoreboard store.
    loop = Worker([], channel, SignalPipe(()), drain_timeout=1.0, high_water=1 << 20, mark_events=False)
    read_size = 65536
    for fd in range(FIRST_FD, FIRST_FD + connections):
        conn = Connection(
            FakeSocket(fd, read_size, pipeline),
            f"uuid-{fd}",
            "default",
            "127.0.0.1:1",  # type: ignore[arg-type]
            make_framer(b"\r\n", 1 << 20),
            read_size,
            1 << 20,
        )
        conn.mask = select.EPOLLIN
        conn.settle()
        loop.conns[fd] = conn
    ready = [(fd, select.EPOLLIN) for fd in loop.conns]
    loop.epoll = FakeEpoll(ready, rounds, channel.fileno())  # type: ignore[assignment]
    master_end.send(encode(Kind.QUIT, {}))  # read once the rounds are over: the loop stops, the app returns
    start = time.process_time()
    ping_main(TcpWorker(loop))
    seconds = time.process_time() - start
    # Published as the loop stopped: minus the events handled, the stop's CLOSE events too.
    closes = loop.slot.ints[loop.slot.lifecycle_index + 1]
    return seconds, -loop.slot.signed[loop.slot.activity_index] - closes


def instructions(connections: int, rounds: int, pipeline: int) -> int:
    """Instructions valgrind counts for a whole run of this script."""
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--connections",
            str(connections),
            "--rounds",
            str(rounds),
            "--pipeline",
            str(pipeline),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind: {result.stderr[-300:]}")
    return int(match.group(1))


def where(args: argparse.Namespace) -> str:
    """The conditions of a figure, printed with it."""
    return f"{args.connections} connections per poll, {args.pipeline} PINGs per read, Python {sys.version.split()[0]}, {implementation()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2, help="readable connections per poll")
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--pipeline", type=int, default=1, help="PINGs per read (redis-benchmark -P)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    args = parser.parse_args()
    if args.callgrind:
        few, many = 5_000, 25_000
        few, many = few // args.pipeline or 1, many // args.pipeline or 2
        counts = [instructions(args.connections, rounds, args.pipeline) for rounds in (few, many)]
        per_request = (counts[1] - counts[0]) / (args.connections * args.pipeline * (many - few))
        print(f"{per_request:,.0f} instructions per request ({where(args)})")
        return 0
    requests = args.connections * args.rounds * args.pipeline
    seconds, handled = run(args.connections, args.rounds, args.pipeline)
    if handled != requests:
        print(f"the loop handled {handled} events, not {requests}", file=sys.stderr)
        return 1
    print(f"{seconds / requests * 1e9:,.0f} ns of CPU per request ({where(args)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
