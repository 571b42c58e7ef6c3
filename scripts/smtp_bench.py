#!/usr/bin/env python3
"""The seed's own workload: SMTP deliveries to prefork_tcp's SMTP example and to aiosmtpd.

Postfix's load generator ``smtp-source`` (Debian package ``postfix``; /usr/sbin) delivers
--messages messages of --size bytes, one per session (connect, HELO, MAIL, RCPT, DATA,
QUIT), with 1 and with 50 sessions at once, to:

- prefork_tcp serving ``prefork_tcp.examples.smtp`` with one worker (nothing written to
  disk; ``--log-level warning``, so the per-message log line is not written either);
- aiosmtpd with a handler that accepts and counts each message (``scripts/peers/
  aiosmtpd_counter.py``), on asyncio and on uvloop.

Pinned: each server on CPU 0 (prefork_tcp's master included), smtp-source on CPU 1.
Reported per server and case: messages/s and server CPU microseconds per message (the
process tree's user+system time), the median of --rounds rounds that rotate the servers'
order, and the ratio to the best aiosmtpd.

    python3 scripts/smtp_bench.py [--rounds 5] [--messages 3000] [--size 1000] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import PEERS, PY, free_port, stop, tree_cpu

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SERVERS = {
    "prefork_tcp": [
        PY,
        "-m",
        "prefork_tcp",
        "serve",
        "prefork_tcp.examples.smtp:main",
        "-w",
        "1",
        "--log-level",
        "warning",
        "-b",
        "127.0.0.1:{port}",
    ],
    "aiosmtpd": [PY, str(PEERS / "aiosmtpd_counter.py"), "{port}"],
    "aiosmtpd on uvloop": [PY, str(PEERS / "aiosmtpd_counter.py"), "{port}", "--uvloop"],
}
NEEDS = {"aiosmtpd": ("aiosmtpd",), "aiosmtpd on uvloop": ("aiosmtpd", "uvloop")}
CASES = {"1 session": 1, "50 sessions": 50}


def start(command: list[str], port: int) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", *[part.replace("{port}", str(port)) for part in command]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited with {proc.returncode}")  # nothing left running
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"220"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{command} did not greet in 30s")
    time.sleep(0.3)  # let start-up work finish before the CPU clock is read
    return proc


def deliver(proc: subprocess.Popen[bytes], port: int, sessions: int, messages: int, size: int) -> tuple[float, float]:
    """Deliver ``messages``; return messages/s and the server's CPU microseconds per message."""
    argv = ["taskset", "-c", "1", SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    argv += ["-f", "bench@example.org", "-t", "rcpt@example.org", f"127.0.0.1:{port}"]
    before = tree_cpu(proc.pid)
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    after = tree_cpu(proc.pid)
    if result.returncode != 0 or result.stderr.strip():
        raise RuntimeError(f"smtp-source failed ({result.returncode}): {result.stderr[-400:]}")
    return messages / seconds, (after - before) / messages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the servers' order rotating (default 5)")
    parser.add_argument("--messages", type=int, default=3000, help="messages per case (default 3000)")
    parser.add_argument("--size", type=int, default=1000, help="bytes of payload per message (default 1000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not Path(SMTP_SOURCE).exists():
        print("smtp_bench.py needs smtp-source (Debian: apt-get install postfix)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("smtp_bench.py pins the server and the client to CPUs 0 and 1: it needs two", file=sys.stderr)
        return 2
    servers = {name: cmd for name, cmd in SERVERS.items() if all(importlib.util.find_spec(m) for m in NEEDS.get(name, ()))}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {case: [] for case in CASES} for name in servers}
    names = list(servers)
    for round_no in range(args.rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            port = free_port()
            proc = start(servers[name], port)
            try:
                for case, sessions in CASES.items():
                    rate, cpu = deliver(proc, port, sessions, args.messages, args.size)
                    samples[name][case].append((rate, cpu))
                    print(f"  round {round_no + 1} {name:<20} {case:<12} {rate:>8.0f} msg/s {cpu:>8.1f} us/msg", file=sys.stderr)
            finally:
                stop(proc)
    rows = []
    for case in CASES:
        medians = {
            name: (statistics.median(r for r, _ in samples[name][case]), statistics.median(c for _, c in samples[name][case]))
            for name in names
        }
        peers = [name for name in names if name != "prefork_tcp"]
        best_rate = max((medians[p][0] for p in peers), default=0.0)
        best_cpu = min((medians[p][1] for p in peers), default=0.0)
        for name in names:
            rate, cpu = medians[name]
            rows.append(
                {
                    "server": name,
                    "case": case,
                    "messages_per_s": round(rate),
                    "cpu_us_per_message": round(cpu, 1),
                    "rate_vs_best_aiosmtpd": round(rate / best_rate, 2) if best_rate else None,
                    "cpu_vs_best_aiosmtpd": round(cpu / best_cpu, 2) if best_cpu else None,
                }
            )
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "messages": args.messages, "size": args.size, "rows": rows}))
    else:
        print("| server | case | messages/s | CPU µs/message | messages/s vs best aiosmtpd | CPU vs best aiosmtpd |")
        print("|---|---|---:|---:|---:|---:|")
        for row in rows:
            cells = [
                row["server"],
                row["case"],
                f"{row['messages_per_s']:,}",
                row["cpu_us_per_message"],
                row["rate_vs_best_aiosmtpd"],
                row["cpu_vs_best_aiosmtpd"],
            ]
            print("| " + " | ".join(str(cell) for cell in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
