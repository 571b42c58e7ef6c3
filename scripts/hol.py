#!/usr/bin/env python3
"""Head-of-line blocking: do one connection's slow events delay the other connections?

Starts ``prefork-tcp serve`` (default configuration, --workers workers) with the
``slow`` example on a free loopback port, once per phase.  --fast clients each send a
PING every --interval and measure the round trip; --slow-clients clients each send an
event that takes --slow-ms (``SLEEP``: blocking with the GIL released, as I/O does;
``BURN``: computing with the GIL held) every --slow-every.  Phases: no slow client,
then 1 and 2 slow clients with each kind of slow event.

Reports the fast clients' p50, p99 and max round trip per phase; the target is a p99
with slow clients at most --factor times the p99 without (exit status 1 when missed).
Only 127.0.0.1 is used, and everything stops by itself.

    python3 scripts/hol.py [--duration 5] [--workers 4] [--fast 40] [--factor 3]
        [--config-extra 'slow_event = "0"']
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time

from serving import ServerProcess

PING, PONG = b"PING\r\n", b"+PONG\r\n"


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def fast_client(stream: Stream, interval: float, until: float, samples: list[float]) -> None:
    reader, writer = stream
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    try:
        while loop.time() < until:
            started = time.perf_counter()
            writer.write(PING)
            if await reader.readline() != PONG:
                raise SystemExit("a fast client got a wrong answer")
            samples.append(time.perf_counter() - started)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        writer.close()


async def slow_client(stream: Stream, verb: str, slow_ms: int, every: float, until: float) -> int:
    reader, writer = stream
    loop = asyncio.get_running_loop()
    done = 0
    try:
        while loop.time() < until:
            writer.write(f"{verb} {slow_ms}\r\n".encode())
            if await reader.readline() != b"+OK\r\n":
                raise SystemExit("a slow client got a wrong answer")
            done += 1
            await asyncio.sleep(every)
    finally:
        writer.close()
    return done


async def phase(port: int, args: argparse.Namespace, verb: str, slow: int) -> list[float]:
    samples: list[float] = []
    loop = asyncio.get_running_loop()
    # One connection at a time, the slow ones at random places among the fast ones, so
    # that the server spreads them over its workers as it would spread real clients.
    kinds = ["fast"] * args.fast + ["slow"] * slow
    random.shuffle(kinds)
    streams = []
    for _ in kinds:
        streams.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.002)
    warm_until = loop.time() + args.warmup
    until = warm_until + args.duration
    tasks = [
        asyncio.create_task(
            fast_client(stream, args.interval, until, samples)
            if kind == "fast"
            else slow_client(stream, verb, args.slow_ms, args.slow_every, until)
        )
        for kind, stream in zip(kinds, streams, strict=True)
    ]
    await asyncio.sleep(max(0.0, warm_until - loop.time()))
    del samples[:]  # the warm-up (connections spreading, first moves) is not measured
    await asyncio.gather(*tasks)
    return samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring, per phase")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fast", type=int, default=40, help="fast clients")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between a fast client's PINGs")
    parser.add_argument("--slow-ms", type=int, default=50, help="how long a slow event takes")
    parser.add_argument("--slow-every", type=float, default=0.1, help="seconds between a slow client's events")
    parser.add_argument("--factor", type=float, default=3.0, help="target: p99 with slow clients <= factor x p99 without")
    parser.add_argument("--config-extra", default="", help="lines added to [tcp.pool], e.g. 'slow_event = \"0\"'")
    args = parser.parse_args()

    phases = [("-", 0)] + [(verb, n) for verb in ("SLEEP", "BURN") for n in (1, 2)]
    print(
        f"{args.workers} workers, {args.fast} fast clients (a PING every {args.interval * 1000:g} ms), "
        f"slow events of {args.slow_ms} ms every {args.slow_every * 1000:g} ms; {args.duration:g} s per phase"
    )
    print(f"{'slow events':<12} {'slow clients':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'requests':>9} {'moved':>6}  verdict")
    baseline = 0.0
    failed = False
    with tempfile.TemporaryDirectory(prefix="prefork-tcp-hol-") as workdir:
        for verb, slow in phases:
            server = ServerProcess(
                workdir,
                'app = "prefork_tcp.examples.slow:main"\n[tcp.servers.slow]\naddr = "tcp://127.0.0.1:0"\n'
                f"[tcp.pool]\nnum_workers = {args.workers}\n{args.config_extra}\n",
            )
            try:
                samples = asyncio.run(phase(server.port, args, verb, slow))
            finally:
                log = server.stop()
            moved = sum(int(n) for n in re.findall(r": (\d+) other connections moved", log))
            if not samples:
                raise SystemExit("no round trip was measured")
            p50, p99, top = statistics.median(samples), percentile(samples, 0.99), max(samples)
            if slow == 0:
                baseline = p99
                verdict = "baseline"
            else:
                ok = p99 <= args.factor * baseline
                failed |= not ok
                verdict = f"{p99 / baseline:.1f}x baseline p99: {'ok' if ok else 'MISSED'}"
            kind = {"-": "none", "SLEEP": "sleep (I/O)", "BURN": "burn (CPU)"}[verb]
            print(f"{kind:<12} {slow:>12} {p50 * 1000:>8.2f} {p99 * 1000:>8.2f} {top * 1000:>8.1f} {len(samples):>9} {moved:>6}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
