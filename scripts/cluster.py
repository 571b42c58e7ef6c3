#!/usr/bin/env python3
"""A cluster on loopback: HAProxy in front of two prefork_tcp instances, as on two machines.

Instance ``one`` gets PROXY v2 headers (``send-proxy-v2``), instance ``two`` v1
(``send-proxy``); HAProxy checks each instance's ``/ready`` on its metrics port, so no
health check ever reaches the application.  Both run the ``whoami`` example, which
answers every line with the client address the application sees.

Well-behaved clients talk through the balancer for --duration seconds: --connections
long-lived connections asking ``who`` in a loop, and --short clients each opening a
connection, asking once and saying QUIT.  Every answer must be the client's own address
and port.  A third of the way in, instance one is upgraded (``prefork-tcp upgrade``:
a new master takes over every connection); two thirds in, instance two reloads (HUP:
its workers are replaced).  Meanwhile both ``/metrics`` pages are scraped every
--scrape-interval seconds and parsed with prometheus_client's parser.

At the end: what the clients saw (answers, dropped connections, wrong addresses,
connections refused or failed), the scrapes (failures, latency), and the scrape cost
measured on its own: the master's CPU time per scrape over --cost-scrapes back-to-back
scrapes, and the page's size.  Exit status 1 when a client saw anything wrong, a scrape
failed, or the upgrade or reload did not happen.  Loopback only; everything stops by
itself.

    python3 scripts/cluster.py [--duration 20] [--connections 40] [--short 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil
from prometheus_client.parser import text_string_to_metric_families
from serving import ServerProcess

WHO, QUIT = b"who\r\n", b"QUIT\r\n"


@dataclass
class Seen:
    answers: int = 0
    dropped: int = 0
    wrong: int = 0
    connect_failures: int = 0
    short_sessions: int = 0
    slowest: float = 0.0
    scrapes: int = 0
    scrape_failures: list[str] = field(default_factory=list)
    scrape_latency: list[float] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


class Instance(ServerProcess):
    """One prefork_tcp instance: whoami behind a PROXY header, metrics on a free port."""

    def __init__(self, workdir: str, name: str, mode: str, workers: int) -> None:
        os.makedirs(workdir)
        self.name = name
        self.control = os.path.join(workdir, "control.sock")
        super().__init__(
            workdir,
            f'app = "prefork_tcp.examples.whoami:main"\n[control]\nsocket = "{self.control}"\n'
            '[metrics]\naddr = "127.0.0.1:0"\n'
            f'[tcp.servers.edge]\naddr = "tcp://127.0.0.1:0"\nproxy_protocol = "{mode}"\n'
            f"[tcp.pool]\nnum_workers = {workers}\nmax_jobs = 20000\n",
        )
        match = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", open(self.log_path).read())
        if match is None:
            raise SystemExit(f"instance {name}: no metrics line in its log")
        self.metrics_port = int(match.group(1))

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "prefork_tcp", *args, "--control", self.control],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


class HAProxy:
    """``haproxy`` in the foreground on a free loopback port."""

    def __init__(self, workdir: str, instances: list[Instance]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        sends = {"one": "send-proxy-v2", "two": "send-proxy"}
        servers = "\n".join(
            f"    server {i.name} 127.0.0.1:{i.port} {sends[i.name]} check port {i.metrics_port} inter 500ms fall 2 rise 1"
            for i in instances
        )
        path = os.path.join(workdir, "haproxy.cfg")
        with open(path, "w") as fh:
            fh.write(
                "global\n    maxconn 2000\n"
                "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n"
                f"frontend edge\n    bind 127.0.0.1:{self.port}\n    default_backend instances\n"
                "backend instances\n    balance roundrobin\n    option httpchk GET /ready\n"
                f"{servers}\n"
            )
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"haproxy exited: {self.proc.stdout.read().decode()}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("haproxy did not listen in 30s")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=10)[0].decode()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[0].decode()


async def connect(port: int, seen: Seen) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes] | None:
    """A connection through the balancer, and the answer ``who`` must get on it (None: it failed)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, asyncio.TimeoutError):
        seen.connect_failures += 1
        await asyncio.sleep(0.05)
        return None
    host, my_port = writer.get_extra_info("sockname")[:2]
    return reader, writer, f"{host}:{my_port}\r\n".encode()


async def long_lived(port: int, stop_at: float, seen: Seen) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        connection = await connect(port, seen)
        if connection is None:
            continue
        reader, writer, me = connection
        try:
            while loop.time() < stop_at:
                sent = loop.time()
                writer.write(WHO)
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line:
                    raise ConnectionResetError("closed")
                seen.answers += 1
                seen.wrong += line != me
                seen.slowest = max(seen.slowest, loop.time() - sent)
        except (OSError, asyncio.TimeoutError):
            seen.dropped += 1
        finally:
            writer.close()


async def short_lived(port: int, stop_at: float, seen: Seen) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        connection = await connect(port, seen)
        if connection is None:
            continue
        reader, writer, me = connection
        try:
            writer.write(WHO + QUIT)
            answer = await asyncio.wait_for(reader.readline(), 10)
            bye = await asyncio.wait_for(reader.read(), 10)
            seen.answers += bool(answer)
            seen.wrong += answer != me
            if bye != b"bye\r\n":
                seen.dropped += 1
            else:
                seen.short_sessions += 1
        except (OSError, asyncio.TimeoutError):
            seen.dropped += 1
        finally:
            writer.close()


async def fetch(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def scraper(instances: list[Instance], interval: float, stop_at: float, seen: Seen) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        for instance in instances:
            started = loop.time()
            try:
                status, body = await fetch(instance.metrics_port)
                families = {f.name for f in text_string_to_metric_families(body.decode())}
                if status != 200 or "prefork_tcp_connections" not in families:
                    raise ValueError(f"status {status}, families {sorted(families)[:3]}")
            except Exception as exc:  # every failure is reported, with what it was
                seen.scrape_failures.append(f"{instance.name}: {exc!r}")
                continue
            seen.scrapes += 1
            seen.scrape_latency.append(loop.time() - started)
        await asyncio.sleep(interval)


async def operator(instances: list[Instance], duration: float, seen: Seen) -> None:
    """Upgrade instance one a third of the way in, reload instance two at two thirds."""
    loop = asyncio.get_running_loop()
    one, two = instances
    await asyncio.sleep(duration / 3)
    result = await loop.run_in_executor(None, one.manage, "upgrade", "--wait", "60")
    seen.actions.append(f"upgrade one: {(result.stdout or result.stderr).strip()}")
    await asyncio.sleep(duration / 3)
    os.kill(two.master_pid(), signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "reload complete" not in open(two.log_path).read():
        await asyncio.sleep(0.1)
    seen.actions.append("reload two: " + ("reload complete" if "reload complete" in open(two.log_path).read() else "not complete in 60 s"))


def scrape_cost(instance: Instance, scrapes: int) -> dict[str, float]:
    """The master's CPU time per scrape, over ``scrapes`` back-to-back scrapes while the clients are gone."""
    master = psutil.Process(instance.master_pid())

    async def run() -> list[float]:
        latencies = []
        for _ in range(scrapes):
            started = time.perf_counter()
            status, body = await fetch(instance.metrics_port)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"scrape of {instance.name} answered {status}")
        return latencies

    before = master.cpu_times()
    latencies = asyncio.run(run())
    after = master.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    size = len(asyncio.run(fetch(instance.metrics_port))[1])
    return {
        "master_cpu_ms_per_scrape": round(cpu / scrapes * 1000, 3),
        "latency_ms_median": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_max": round(max(latencies) * 1000, 2),
        "page_bytes": size,
    }


def totals(instance: Instance) -> dict[str, float]:
    """A few counters of the instance's master (an upgraded instance counts from its new master's start)."""
    body = asyncio.run(fetch(instance.metrics_port))[1].decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        if family.name.startswith("prefork_tcp_") and family.type in ("counter", "gauge"):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                label = ",".join(f"{k}={v}" for k, v in sample.labels.items() if k != "worker")
                if sample.value and "rss" not in sample.name and "info" not in sample.name:
                    key = sample.name.removeprefix("prefork_tcp_") + (f"{{{label}}}" if label else "")
                    out[key] = out.get(key, 0) + sample.value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of client traffic (default 20)")
    parser.add_argument("--connections", type=int, default=40, help="long-lived client connections (default 40)")
    parser.add_argument("--short", type=int, default=4, help="clients opening a connection per question (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="workers per instance (default 2)")
    parser.add_argument("--scrape-interval", type=float, default=0.2, help="seconds between scrapes of both instances (default 0.2)")
    parser.add_argument("--cost-scrapes", type=int, default=300, help="back-to-back scrapes measuring the scrape cost (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not shutil.which("haproxy"):
        print("cluster.py needs haproxy (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    seen = Seen()
    with tempfile.TemporaryDirectory(prefix="prefork-tcp-cluster-") as workdir:
        instances: list[Instance] = []
        proxy = None
        try:
            instances.append(Instance(os.path.join(workdir, "one"), "one", "v2", args.workers))
            instances.append(Instance(os.path.join(workdir, "two"), "two", "v1", args.workers))
            proxy = HAProxy(workdir, instances)

            async def traffic() -> None:
                stop_at = asyncio.get_running_loop().time() + args.duration
                await asyncio.gather(
                    operator(instances, args.duration, seen),
                    scraper(instances, args.scrape_interval, stop_at, seen),
                    *(long_lived(proxy.port, stop_at, seen) for _ in range(args.connections)),
                    *(short_lived(proxy.port, stop_at, seen) for _ in range(args.short)),
                )

            started = time.monotonic()
            asyncio.run(traffic())
            elapsed = time.monotonic() - started
            cost = {i.name: scrape_cost(i, args.cost_scrapes) for i in instances}
            counters = {i.name: totals(i) for i in instances}
        finally:
            haproxy_log = proxy.stop() if proxy is not None else ""
            logs = [instance.stop() for instance in instances]
    errors = [line for log in logs for line in log.splitlines() if "[ERROR]" in line]
    report = {
        "seconds": round(elapsed, 1),
        "answers": seen.answers,
        "answers_per_second": round(seen.answers / elapsed),
        "short_sessions": seen.short_sessions,
        "dropped": seen.dropped,
        "wrong_addresses": seen.wrong,
        "connect_failures": seen.connect_failures,
        "slowest_round_trip_ms": round(seen.slowest * 1000, 1),
        "scrapes": seen.scrapes,
        "scrape_failures": seen.scrape_failures[:5],
        "scrape_latency_ms_median": round(statistics.median(seen.scrape_latency) * 1000, 2) if seen.scrape_latency else None,
        "scrape_latency_ms_max": round(max(seen.scrape_latency) * 1000, 2) if seen.scrape_latency else None,
        "scrape_cost": cost,
        "actions": seen.actions,
        "counters": counters,
        "server_errors": errors[:5],
        "haproxy_down_events": len(re.findall(r"is DOWN", haproxy_log)),
    }
    failed = (
        seen.dropped
        or seen.wrong
        or seen.connect_failures
        or seen.scrape_failures
        or errors
        or len(seen.actions) != 2
        or not seen.actions[0].startswith("upgrade one: upgraded")
        or not seen.actions[1].endswith("reload complete")
    )
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
        print("FAILED" if failed else "OK: no client saw a dropped connection or a wrong address; every scrape parsed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
