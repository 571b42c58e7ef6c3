#!/usr/bin/env python3
"""Soak test: clients keep PINGing the ping example while workers are recycled or killed.

Two phases, each for --duration seconds against a fresh server on a free loopback port:

recycle  every graceful recycle at once: small max_jobs, a memory limit every worker
         exceeds (so each worker retires at every watch_tick), and on a timer SIGHUP,
         SIGTTIN, `prefork-tcp reset` and SIGTTOU. Target: no connection dropped, no wrong answer.
kill     SIGKILL a random worker every second. Target: only the killed workers'
         connections are lost (dropped <= what they held), and the service goes on.

Exit status 1 when a target is missed.

Clients are --connections long-lived connections (asyncio, each keeping --depth PINGs in
flight); a dropped connection is counted and reconnected. With redis-benchmark installed,
it runs alongside as extra load (-k 0: a new connection per request) and its summary is
printed too. Only 127.0.0.1 is used, and everything stops by itself.

    python3 scripts/soak.py [--duration 20] [--connections 50] [--workers 2] [--phase recycle|kill|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from serving import ServerProcess

PING, PONG = b"PING\r\n", b"+PONG\r\n"


@dataclass
class Stats:
    answered: int = 0
    connects: int = 0
    dropped: int = 0
    wrong: int = 0
    stalls: int = 0
    connect_errors: int = 0
    slowest: float = 0.0
    #: Connections the SIGKILLed workers held just before (kill phase).
    victims_held: int = 0
    actions: list[str] = field(default_factory=list)


class Server(ServerProcess):
    """``prefork-tcp serve`` for the ping example, with a control socket, on a free port."""

    def __init__(self, workdir: str, workers: int, extra: str) -> None:
        self.control = os.path.join(workdir, "control.sock")
        super().__init__(
            workdir,
            f'app = "prefork_tcp.examples.ping:main"\n[control]\nsocket = "{self.control}"\n'
            f'[tcp.servers.ping]\naddr = "tcp://127.0.0.1:0"\n[tcp.pool]\nnum_workers = {workers}\n{extra}',
        )

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "prefork_tcp", *args, "--control", self.control], capture_output=True, text=True, timeout=30, check=False
        )
        return result.stdout.strip() or result.stderr.strip()

    def serving_workers(self) -> dict[int, int]:
        """Map the pid of each serving worker to its open connections."""
        rows = [row.split() for row in self.manage("workers").splitlines()[1:]]
        return {int(row[1]): int(row[4]) for row in rows if row[2] in ("serving", "idle", "busy")}


async def client(port: int, depth: int, stop_at: float, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, asyncio.TimeoutError):
            stats.connect_errors += 1
            await asyncio.sleep(0.05)
            continue
        stats.connects += 1
        try:
            while loop.time() < stop_at:
                sent = loop.time()
                writer.write(PING * depth)
                for _ in range(depth):
                    line = await asyncio.wait_for(reader.readline(), 10)
                    if not line:
                        raise ConnectionResetError("closed by the server")
                    if line == PONG:
                        stats.answered += 1
                    else:
                        stats.wrong += 1
                stats.slowest = max(stats.slowest, loop.time() - sent)
        except (ConnectionError, OSError):
            stats.dropped += 1
        except asyncio.TimeoutError:
            stats.stalls += 1
        finally:
            writer.close()


async def chaos(server: Server, phase: str, stop_at: float, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    step = 0
    while loop.time() < stop_at - 1.5:  # the last moments stay calm so the counts settle
        await asyncio.sleep(1.0)
        step += 1
        if phase == "kill":
            workers = await loop.run_in_executor(None, server.serving_workers)
            if workers:
                victim = random.choice(sorted(workers))
                os.kill(victim, signal.SIGKILL)
                stats.actions.append(f"SIGKILL {victim}")
                stats.victims_held += workers[victim]
            continue
        action = {0: signal.SIGHUP, 1: signal.SIGTTIN, 2: "reset", 3: signal.SIGTTOU}.get(step % 5)
        if action == "reset":
            await loop.run_in_executor(None, server.manage, "reset")
            stats.actions.append("reset")
        elif action is not None:
            server.proc.send_signal(action)
            stats.actions.append(signal.Signals(action).name)


def redis_benchmark(port: int, seconds: float) -> subprocess.Popen | None:
    if not shutil.which("redis-benchmark"):
        return None
    requests = int(seconds * 3000)
    return subprocess.Popen(
        ["redis-benchmark", "-p", str(port), "-t", "ping_inline", "-n", str(requests), "-c", "10", "-k", "0", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_phase(phase: str, args: argparse.Namespace) -> dict[str, object]:
    extra = 'max_jobs = 2000\n[tcp.pool.supervisor]\nwatch_tick = "1s"\nmax_worker_memory = 1\n' if phase == "recycle" else ""
    with tempfile.TemporaryDirectory(prefix="prefork-tcp-soak-") as workdir:
        server = Server(workdir, args.workers, extra)
        bench = redis_benchmark(server.port, args.duration)
        stats = Stats()

        async def main() -> None:
            stop_at = asyncio.get_running_loop().time() + args.duration
            await asyncio.gather(
                chaos(server, phase, stop_at, stats), *(client(server.port, args.depth, stop_at, stats) for _ in range(args.connections))
            )

        started = time.monotonic()
        asyncio.run(main())
        elapsed = time.monotonic() - started
        bench_out = ""
        if bench is not None:
            try:
                bench_out = bench.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired:
                bench.kill()
                bench_out = "redis-benchmark did not finish in time (killed)"
        log = server.stop()
    retired = len(re.findall(r"retired \(", log))
    killed = len(re.findall(r"was killed by SIGKILL", log))
    return {
        "phase": phase,
        "seconds": round(elapsed, 1),
        "answered": stats.answered,
        "per_second": round(stats.answered / elapsed),
        "connections_opened": stats.connects,
        "dropped": stats.dropped,
        "wrong_answers": stats.wrong,
        "stalled": stats.stalls,
        "connect_errors": stats.connect_errors,
        "slowest_round_trip_ms": round(stats.slowest * 1000, 1),
        "workers_retired": retired,
        "workers_killed": killed,
        "actions": len(stats.actions),
        "killed_workers_held": stats.victims_held,
        "redis_benchmark": bench_out.strip().splitlines()[-1] if bench_out.strip() else "not installed",
        "server_errors": [line for line in log.splitlines() if "[ERROR]" in line][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    parser.add_argument("--connections", type=int, default=50, help="long-lived client connections (default 50)")
    parser.add_argument("--depth", type=int, default=4, help="PINGs in flight per connection (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="server workers (default 2)")
    parser.add_argument("--phase", choices=["recycle", "kill", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object per phase")
    args = parser.parse_args()
    phases = ["recycle", "kill"] if args.phase == "both" else [args.phase]
    failed = False
    for phase in phases:
        result = run_phase(phase, args)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"\n== {phase} ==")
            for key, value in result.items():
                print(f"{key:>22}: {value}")
        if phase == "recycle" and (result["dropped"] or result["wrong_answers"] or result["stalled"]):
            failed = True
        if phase == "kill" and (
            result["wrong_answers"] or result["stalled"] or not result["answered"] or result["dropped"] > result["killed_workers_held"]
        ):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
