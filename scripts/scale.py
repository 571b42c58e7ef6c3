#!/usr/bin/env python3
"""Scale: many idle connections held open against 2 workers, and how connections spread.

1. Held connections: opens --connections (default 10,000) idle connections to the ping
   example on 2 workers and reports the workers' RSS per connection over the idle
   baseline (target <= 4 KB), and the p50/p99 round-trip latency of one active client
   while they are open, against the same client with none open (target p99 <= 2x).
2. Accept balance: opens --balance (default 1,000) connections one after another and
   reports how they split between the 2 workers, from the workers' own counts in the
   scoreboard (``prefork-tcp workers``; target within 1.3:1).

Needs a file-descriptor limit above the connection count for this script and the server
(it raises its soft limit to the hard limit; as root, ``ulimit -n 20000`` first if the
hard limit is lower). Only 127.0.0.1 is used; everything stops by itself.

    python3 scripts/scale.py [--connections 10000] [--balance 1000] [--pings 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil


class Server:
    """The ping example on 2 workers with a control socket, on a free port."""

    def __init__(self, workdir: str, workers: int) -> None:
        self.control = os.path.join(workdir, "control.sock")
        log_path = os.path.join(workdir, "server.log")
        config = os.path.join(workdir, "scale.toml")
        with open(config, "w") as fh:
            fh.write(
                f'app = "prefork_tcp.examples.ping:main"\n[control]\nsocket = "{self.control}"\n'
                f'[log]\nlevel = "warning"\n[tcp.servers.ping]\naddr = "tcp://127.0.0.1:0"\n'
                f"[tcp.pool]\nnum_workers = {workers}\n"
            )
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork_tcp", "serve", "-c", config, "--log-level", "info"], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            text = open(log_path).read()
            match = re.search(r"listening at tcp://127\.0\.0\.1:(\d+)", text)
            if match and "serving:" in text:
                self.port = int(match.group(1))
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"server did not start:\n{text}")
            time.sleep(0.05)

    def workers(self) -> list[dict]:
        """The scoreboard rows (pid, connections, ...) through the control socket."""
        from prefork_tcp.control import request

        return request(self.control, "workers")["workers"]

    def rss(self) -> int:
        return sum(psutil.Process(w["pid"]).memory_info().rss for w in self.workers())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def latencies(port: int, pings: int) -> tuple[float, float]:
    """p50 and p99 round trip in microseconds of one client doing ``pings`` PINGs."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(pings):
            start = time.perf_counter()
            sock.sendall(b"PING\r\n")
            if sock.recv(64) != b"+PONG\r\n":
                raise SystemExit("wrong answer")
            samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def open_idle(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def wait_connections(server: Server, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = server.workers()
        if sum(w["connections"] for w in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--balance", type=int, default=1_000)
    parser.add_argument("--pings", type=int, default=3_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 200
    if hard < needed:
        print(f"scale: the open-files limit is {hard}; {needed} are needed (ulimit -n {needed})", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="prefork-tcp-scale-") as workdir:
        server = Server(workdir, args.workers)
        try:
            latencies(server.port, 200)  # warm up
            time.sleep(0.5)
            base_rss = server.rss()
            base_p50, base_p99 = latencies(server.port, args.pings)
            socks = open_idle(server.port, args.connections)
            rows = wait_connections(server, args.connections)
            time.sleep(0.5)
            held_rss = server.rss()
            held_p50, held_p99 = latencies(server.port, args.pings)
            report.update(
                {
                    "connections_held": sum(w["connections"] for w in rows),
                    "split_of_held": [w["connections"] for w in rows],
                    "rss_baseline_mb": round(base_rss / 2**20, 1),
                    "rss_held_mb": round(held_rss / 2**20, 1),
                    "rss_per_connection_bytes": round((held_rss - base_rss) / args.connections),
                    "p50_us_none_open": round(base_p50),
                    "p99_us_none_open": round(base_p99),
                    "p50_us_held_open": round(held_p50),
                    "p99_us_held_open": round(held_p99),
                    "p99_ratio": round(held_p99 / base_p99, 2),
                }
            )
            for sock in socks:
                sock.close()
            wait_connections_zero = time.monotonic() + 60
            while sum(w["connections"] for w in server.workers()) and time.monotonic() < wait_connections_zero:
                time.sleep(0.1)
            socks = open_idle(server.port, args.balance)
            rows = wait_connections(server, args.balance)
            split = sorted((w["connections"] for w in rows), reverse=True)
            report["balance_split"] = split
            report["balance_ratio"] = round(split[0] / max(1, split[-1]), 2) if len(split) > 1 else 1.0
            for sock in socks:
                sock.close()
        finally:
            server.stop()
    print(json.dumps(report, indent=1))
    ok = (
        report["rss_per_connection_bytes"] <= 4096
        and report["p99_ratio"] <= 2.0  # type: ignore[operator]
        and report["balance_ratio"] <= 1.3
    )  # type: ignore[operator]
    print("targets:", "met" if ok else "missed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
