#!/usr/bin/env python3
"""What ``prefork_tcp.kv`` costs over the raw client: operations per second per driver.

For each driver (SQLite in a temporary file; Redis on a redis-server this script starts on
a free loopback port, or --redis URL) and each operation (``get``, ``set``, ``incr``,
``mget`` of 10 keys), the same work is done through a ``Storage`` and through the raw
client (the standard library's sqlite3 with the same statements; redis-py with the
same settings), from one process and from --processes processes at once.  Rounds
alternate ours and raw; the median of --rounds rounds is reported, with the ratio
raw/ours of operations per second (1.10 = our layer costs 10% more per operation).

Exit status 1 when a ratio is above --target (default 1.10) in one process.

    python3 scripts/kv_bench.py [--ops 20000] [--rounds 5] [--processes 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from prefork_tcp.config import KvConfig
from prefork_tcp.kv import open_storage
from prefork_tcp.kv.sqlitestore import _GET, _INCR, _SCHEMA, _SET

OPERATIONS = ("get", "set", "incr", "mget")
KEYS = [f"key:{i}" for i in range(100)]


def sqlite_raw(path: str) -> dict[str, Callable[[int], object]]:
    """The same statements a careful user of sqlite3 would run, in WAL mode."""
    conn = sqlite3.connect(path, timeout=2.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in _SCHEMA:
        conn.execute(statement)
    execute, now = conn.execute, time.time
    mget_sql = f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * 10)}) AND (expires IS NULL OR expires > ?)"
    return {
        "get": lambda i: execute(_GET, (KEYS[i % 100], now())).fetchone(),
        "set": lambda i: execute(_SET, (KEYS[i % 100], b"value", None)),
        "incr": lambda i: execute(_INCR, {"key": "counter", "by": 1, "now": now()}).fetchone(),
        "mget": lambda i: dict(execute(mget_sql, (*KEYS[i % 90 : i % 90 + 10], now()))),
    }


def redis_raw(url: str, prefix: str) -> dict[str, Callable[[int], object]]:
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0), health_check_interval=0)
    keys = [prefix + key for key in KEYS]
    return {
        "get": lambda i: client.get(keys[i % 100]),
        "set": lambda i: client.set(keys[i % 100], b"value"),
        "incr": lambda i: client.incrby(prefix + "counter", 1),
        "mget": lambda i: client.mget(keys[i % 90 : i % 90 + 10]),
    }


def ours(config: KvConfig) -> dict[str, Callable[[int], object]]:
    storage = open_storage(config)
    return {
        "get": lambda i: storage.get(KEYS[i % 100]),
        "set": lambda i: storage.set(KEYS[i % 100], b"value"),
        "incr": lambda i: storage.incr("counter"),
        "mget": lambda i: storage.mget(KEYS[i % 90 : i % 90 + 10]),
    }


def run_ops(args: tuple[str, str, str, str, int]) -> float:
    """In a process of its own: ``ops`` of one operation; return the seconds they took."""
    who, driver, where, operation, ops = args
    config = KvConfig("bench", driver, file=where if driver == "sqlite" else "", addr=where if driver == "redis" else "", prefix="bench:")
    if who == "ours":
        calls = ours(config)
    elif driver == "sqlite":
        calls = sqlite_raw(where)
    else:
        calls = redis_raw(where, "bench:")
    call = calls[operation]
    for i in range(200):  # connect and warm up
        call(i)
    started = time.perf_counter()
    for i in range(ops):
        call(i)
    return time.perf_counter() - started


def measure(pool: multiprocessing.pool.Pool, who: str, driver: str, where: str, operation: str, ops: int, processes: int) -> float:
    """Operations per second of ``processes`` processes doing ``ops`` each at once (the
    slowest one's time counts)."""
    seconds = pool.map(run_ops, [(who, driver, where, operation, ops)] * processes, chunksize=1)
    return processes * ops / max(seconds)


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start in 30s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=20000, help="operations per process per measurement (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, ours and raw alternating; the median is reported (default 5)")
    parser.add_argument("--processes", type=int, default=4, help="processes at once for the parallel figures (default 4)")
    parser.add_argument("--redis", default="", help="a Redis to use (redis://host:port/db) instead of starting redis-server")
    parser.add_argument("--driver", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--target", type=float, default=1.10, help="the highest raw/ours ratio accepted in one process (default 1.10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefork-tcp-kv-bench-") as workdir:
        server = None
        places = {}
        if args.driver in ("sqlite", "both"):
            places["sqlite"] = os.path.join(workdir, "bench.db")
        if args.driver in ("redis", "both"):
            if args.redis:
                places["redis"] = args.redis
            elif shutil.which("redis-server"):
                server, places["redis"] = start_redis(workdir)
            else:
                print("redis-server is not installed: the Redis driver is skipped", file=sys.stderr)
        try:
            with multiprocessing.get_context("fork").Pool(args.processes) as pool:
                for driver, where in places.items():
                    for operation in OPERATIONS:
                        for processes in (1, args.processes):
                            samples: dict[str, list[float]] = {"ours": [], "raw": []}
                            for round_ in range(args.rounds):
                                order = ("ours", "raw") if round_ % 2 == 0 else ("raw", "ours")
                                for who in order:
                                    samples[who].append(measure(pool, who, driver, where, operation, args.ops, processes))
                            ours_rate, raw_rate = statistics.median(samples["ours"]), statistics.median(samples["raw"])
                            rows.append(
                                {
                                    "driver": driver,
                                    "operation": operation,
                                    "processes": processes,
                                    "ours_per_s": round(ours_rate),
                                    "raw_per_s": round(raw_rate),
                                    "ratio": round(raw_rate / ours_rate, 3),
                                }
                            )
        finally:
            if server is not None:
                server.kill()
                server.wait()
    hiredis = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "the pure-Python parser"
    missed = [row for row in rows if row["processes"] == 1 and row["ratio"] > args.target]
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, "redis_parser": hiredis, "rows": rows}))
    else:
        print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, redis-py {redis.__version__} with {hiredis}")
        print(f"{'driver':8} {'operation':9} {'procs':>5} {'ours/s':>10} {'raw/s':>10} {'raw/ours':>9}")
        for row in rows:
            figures = f"{row['ours_per_s']:>10,} {row['raw_per_s']:>10,} {row['ratio']:>9.3f}"
            print(f"{row['driver']:8} {row['operation']:9} {row['processes']:>5} {figures}")
        print(f"missed the target ({args.target}) in one process: {len(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
