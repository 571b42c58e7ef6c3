#!/usr/bin/env python3
"""The worker's own cost per request: the real event loop and ping example, reading
``/dev/zero``, so that the kernel does next to nothing.

Each connection's descriptor is ``/dev/zero``, framed at the zero byte: a read of
``--pipeline`` bytes is that many one-byte messages, and the answers are written back to
it. Each round a fake epoll reports --connections such connections readable; the
application, the ping example told that its PING is a zero byte, answers every message.
After --rounds rounds the loop is told to stop, as the master would.

    python3 scripts/hotpath.py [--connections 2] [--rounds 200000]
    python3 scripts/hotpath.py --callgrind     # instructions per request (needs valgrind)

Timing (the default) is as noisy as the machine. ``--callgrind`` runs this script twice
under valgrind (few and many rounds) and reports the difference in instructions per
request: the same on every run, so it tells apart changes of a few percent. Under
redis-benchmark ``-P 1 -c 50`` a poll returns about two connections, hence the default.
``scripts/instructions.py`` counts the same for a real server and real clients.
"""

from __future__ import annotations

import argparse
import itertools
import os
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
from prefork_tcp.examples import ping  # noqa: E402
from prefork_tcp.framing import make_framer  # noqa: E402
from prefork_tcp.signals import SignalPipe  # noqa: E402
from prefork_tcp.worker import Worker  # noqa: E402


class ZeroSocket:
    """A connection's "socket": ``/dev/zero``, which reads zeros and takes every write."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd = os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


#: A message of one zero byte; the ping example takes it for its PING (set in ``run``).
PING = b"\x00"


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
    for _ in range(connections):
        sock = ZeroSocket()
        conn = Connection(sock, f"uuid-{sock.fileno()}", "default", "127.0.0.1:1", make_framer(PING, 1 << 20), pipeline)  # type: ignore[arg-type]
        conn.mask = select.EPOLLIN
        conn.settle()
        loop.conns[conn.fd] = conn
    ready = [(fd, select.EPOLLIN) for fd in loop.conns]
    loop.epoll = FakeEpoll(ready, rounds, channel.fileno())  # type: ignore[assignment]
    master_end.send(encode(Kind.QUIT, {}))  # read once the rounds are over: the loop stops, the app returns
    ping.PING = PING  # the example compares each message with its module's PING
    start = time.process_time()
    ping.main(TcpWorker(loop))
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
