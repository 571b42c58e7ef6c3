#!/usr/bin/env python3
"""Soak test: clients keep PINGing the ping example while workers are recycled or killed.

Three phases, each for --duration seconds against a fresh server on a free loopback port:

recycle  every graceful recycle at once: small max_jobs, a memory limit every worker
         exceeds (so each worker retires at every watch_tick), and on a timer SIGHUP,
         SIGTTIN, `prefork-tcp reset` and SIGTTOU. Target: no connection dropped, no wrong answer.
kill     SIGKILL a random worker every second. Target: only the killed workers'
         connections are lost (dropped <= what they held), and the service goes on.
upgrade  USR2 to the master in charge every --upgrade-every seconds: each time a new master
         takes over every connection and the old one exits. Target: no connection
         dropped, no wrong answer, no connection refused (clients and redis-benchmark).

Exit status 1 when a target is missed.

Clients are --connections long-lived connections (asyncio, each keeping --depth PINGs in
flight); a dropped connection is counted and reconnected. With redis-benchmark installed,
it runs alongside as extra load (-k 0: a new connection per request) and its summary is
printed too. Only 127.0.0.1 is used, and everything stops by itself.

    python3 scripts/soak.py [--duration 20] [--connections 50] [--workers 2] [--phase recycle|kill|upgrade|all]
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

import psutil
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
    #: Upgrades that completed, and those that did not within 30 s (upgrade phase).
    upgrades: int = 0
    upgrades_failed: int = 0
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


def upgrade(server: Server) -> bool:
    """USR2 the master in charge; True once another master is in charge and the old one gone."""
    old = server.master_pid()
    os.kill(old, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.master_pid() != old and _zombie(old):
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def chaos(server: Server, phase: str, stop_at: float, stats: Stats, upgrade_every: float) -> None:
    loop = asyncio.get_running_loop()
    step = 0
    while loop.time() < stop_at - 1.5:  # the last moments stay calm so the counts settle
        await asyncio.sleep(upgrade_every if phase == "upgrade" else 1.0)
        step += 1
        if phase == "upgrade":
            if await loop.run_in_executor(None, upgrade, server):
                stats.upgrades += 1
            else:
                stats.upgrades_failed += 1
            stats.actions.append("USR2")
            continue
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
            os.kill(server.master_pid(), action)
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
                chaos(server, phase, stop_at, stats, args.upgrade_every),
                *(client(server.port, args.depth, stop_at, stats) for _ in range(args.connections)),
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
    bench_lines = bench_out.strip().splitlines()
    bench_errors = [line for line in bench_lines if re.search(r"error|refused|could not connect", line, re.IGNORECASE)]
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
        "upgrades": stats.upgrades,
        "upgrades_failed": stats.upgrades_failed,
        "redis_benchmark": bench_lines[-1] if bench_lines else "not installed",
        "redis_benchmark_errors": len(bench_errors),
        "server_errors": [line for line in log.splitlines() if "[ERROR]" in line][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    parser.add_argument("--connections", type=int, default=50, help="long-lived client connections (default 50)")
    parser.add_argument("--depth", type=int, default=4, help="PINGs in flight per connection (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="server workers (default 2)")
    parser.add_argument("--phase", choices=["recycle", "kill", "upgrade", "both", "all"], default="all", help="both: recycle and kill")
    parser.add_argument("--upgrade-every", type=float, default=3.0, help="seconds between upgrades (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per phase")
    args = parser.parse_args()
    phases = {"both": ["recycle", "kill"], "all": ["recycle", "kill", "upgrade"]}.get(args.phase, [args.phase])
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
        if phase == "upgrade" and (
            result["dropped"]
            or result["wrong_answers"]
            or result["stalled"]
            or result["connect_errors"]
            or result["redis_benchmark_errors"]
            or result["upgrades_failed"]
            or not result["upgrades"]
        ):
            failed = True
        if phase == "kill" and (
            result["wrong_answers"] or result["stalled"] or not result["answered"] or result["dropped"] > result["killed_workers_held"]
        ):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
