#!/usr/bin/env python3
"""Side-by-side benchmark: prefork_tcp against Python peers and redis-server.

Every server answers ``PING\\r\\n`` with ``+PONG\\r\\n`` on a free loopback port and is
driven by ``redis-benchmark -t ping_inline`` (Debian's redis-tools), a C client nobody
here wrote. Cases: ``-P 1`` and ``-P 16`` with ``-c 50``, and ``-k 0`` (a new
connection per request).

A ``-k 0`` sample makes fewer connections than half the ephemeral port range
(``connections_per_sample``), whatever ``--scale`` says: Linux gives a client's
connections to one address ports from half its range first, and past that reuses ports
still in ``TIME_WAIT``; a reused one now and then stalls a connection for the 1-second
SYN retransmission, which cut a whole sample's rate to about 15,000/s and added some 3%
to its server's CPU per connection, to whichever servers it happened to.

Layouts:
- pinned: each server on CPU 0 (``taskset``; prefork_tcp with one worker, its master
  included), the client on CPU 1. This compares per-core efficiency.
- unpinned: prefork_tcp with 2 workers and redis-server, nothing pinned.

For every case it reports requests/s and server CPU microseconds per request (user+sys of
the whole server process tree, from psutil), each also as a ratio to redis-server and to
the best Python peer, as the median of --rounds rounds. Rounds rotate the order of the
servers so that drift of the machine hits all of them alike. Output: a markdown table on
stdout (and in --markdown), the raw numbers (--json) and a bar chart (--chart, needs
matplotlib). Everything it starts is stopped; only 127.0.0.1 is used.

    python3 scripts/bench.py [--rounds 3] [--scale 1.0] [--chart bench.png]
    python3 scripts/bench.py --only prefork_tcp --baseline ../checkout-of-main --no-unpinned

Needs: redis-tools and redis-server (apt), uvloop, twisted, gevent (pip install
'.[bench]'); a peer whose package is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PY = sys.executable


#: name -> (command taking the port, python modules it needs, is it a Python peer)
def prefork(workers: int) -> list[str]:
    return [
        PY,
        "-m",
        "prefork_tcp",
        "serve",
        "prefork_tcp.examples.ping:main",
        "-w",
        str(workers),
        "--log-level",
        "warning",
        "-b",
        "127.0.0.1:{port}",
    ]


def implementation() -> str:
    """The implementation prefork_tcp runs here: "compiled" or "pure Python" (compiled.py)."""
    command = [PY, "-c", "import prefork_tcp; print(prefork_tcp.implementation())"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


#: prefork_tcp's plain Python modules, where the compiled core is installed too.
PURE = ["env", "PREFORK_TCP_NO_EXTENSIONS=1"]

SERVERS: dict[str, tuple[list[str], tuple[str, ...], bool]] = {
    "prefork_tcp": (prefork(1), (), False),
    "prefork_tcp (pure Python)": ([*PURE, *prefork(1)], (), False),
    "asyncio Protocol, write per message": ([PY, str(PEERS / "asyncio_protocol.py"), "{port}"], (), True),
    "uvloop Protocol, write per message": ([PY, str(PEERS / "asyncio_protocol.py"), "{port}", "--uvloop"], ("uvloop",), True),
    "asyncio Protocol, batched writes": ([PY, str(PEERS / "asyncio_batched.py"), "{port}"], (), True),
    "uvloop Protocol, batched writes": ([PY, str(PEERS / "asyncio_batched.py"), "{port}", "--uvloop"], ("uvloop",), True),
    "asyncio streams": ([PY, str(PEERS / "asyncio_streams.py"), "{port}"], (), True),
    "Twisted LineReceiver": ([PY, str(PEERS / "twisted_line.py"), "{port}"], ("twisted",), True),
    "gevent StreamServer": ([PY, str(PEERS / "gevent_server.py"), "{port}"], ("gevent",), True),
    "redis-server": (
        ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
        (),
        False,
    ),
}
UNPINNED = {
    "prefork_tcp (2 workers)": (prefork(2), (), False),
    "prefork_tcp (2 workers, pure Python)": ([*PURE, *prefork(2)], (), False),
    # What a user would run instead of a pre-fork server: two processes on one port.
    "uvloop Protocol, batched writes, 2 processes (SO_REUSEPORT)": (
        [PY, str(PEERS / "asyncio_batched.py"), "{port}", "--uvloop", "--processes", "2"],
        ("uvloop",),
        True,
    ),
    "redis-server": SERVERS["redis-server"],
}
#: case -> (redis-benchmark flags, requests at --scale 1)
CASES = {
    "-P 1": (["-c", "50", "-P", "1"], 100_000),
    "-P 16": (["-c", "50", "-P", "16"], 400_000),
    "-k 0": (["-c", "50", "-k", "0"], 12_000),
}


def connections_per_sample(wanted: int) -> int:
    """At most ``wanted`` connections, and fewer than half the ephemeral ports (module
    docstring): no port is taken twice within a sample."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low, high = map(int, ports.read().split())
    except (OSError, ValueError):
        return wanted
    return max(1000, min(wanted, (high - low + 1) // 2 - 1000))


@dataclass
class Sample:
    rps: float
    cpu_us: float  # server CPU per request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not answer PING in time")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of a process and all its descendants.

    Read from each thread's ``/proc/PID/task/TID/schedstat``, the scheduler's count of
    nanoseconds on a CPU: the user and system times of ``/proc/PID/stat`` (psutil's) come
    in clock ticks of 10 ms, which is 5% of a ``-P 16`` sample's CPU and 4% of a ``-k 0``
    one's, so that their ratios moved in steps of that size. Where it cannot be read,
    psutil's times."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            total += _scheduled(proc.pid)
        except OSError:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    return total


def _scheduled(pid: int) -> float:
    """Seconds the threads of process ``pid`` have run, from the scheduler's statistics
    (threads that ended during a sample are not counted: every server here keeps its own)."""
    if not os.path.exists(f"/proc/{pid}/schedstat"):  # a kernel without them: psutil's times
        raise FileNotFoundError(f"/proc/{pid}/schedstat")
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except FileNotFoundError:  # a thread that just ended
            pass
    return total / 1e9


def start(command: list[str], port: int, pin: str | None) -> subprocess.Popen:
    argv = [part.replace("{port}", str(port)) for part in command]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
    except RuntimeError:
        stop(proc)  # never leave it running
        raise
    time.sleep(0.3)  # let start-up work finish before the CPU clock is read
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait(5)


def measure(proc: subprocess.Popen, port: int, flags: list[str], requests: int, pin: str | None) -> Sample:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "ping_inline", "--csv", "-n", str(requests), *flags]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    before = tree_cpu(proc.pid)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    after = tree_cpu(proc.pid)
    row = next((line for line in result.stdout.splitlines() if line.startswith('"PING_INLINE"')), None)
    if result.returncode != 0 or row is None:
        raise RuntimeError(f"redis-benchmark failed: {result.stdout[-300:]} {result.stderr[-300:]}")
    rps = float(re.findall(r'"([\d.]+)"', row)[0])
    return Sample(rps, (after - before) / requests * 1e6)


def available(servers: dict) -> tuple[dict, list[str]]:
    usable, notes = {}, []
    for name, (command, modules, is_peer) in servers.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing or (command[0] != PY and not shutil.which(command[0])):
            notes.append(f"{name}: skipped ({', '.join(missing) or command[0]} not installed)")
            continue
        usable[name] = (command, modules, is_peer)
    return usable, notes


def run_layout(servers: dict, rounds: int, scale: float, pinned: bool) -> dict[str, dict[str, list[Sample]]]:
    results: dict[str, dict[str, list[Sample]]] = {name: {case: [] for case in CASES} for name in servers}
    names = list(servers)
    for round_no in range(rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            port = free_port()
            proc = start(servers[name][0], port, "0" if pinned else None)
            try:
                for case, (flags, requests) in CASES.items():
                    count = max(1000, int(requests * scale))
                    if "-k" in flags:
                        count = connections_per_sample(count)
                    sample = measure(proc, port, flags, count, "1" if pinned else None)
                    results[name][case].append(sample)
                    print(
                        f"  round {round_no + 1} {name:<24} {case:<6} {sample.rps:>10.0f} req/s {sample.cpu_us:>7.2f} us/req",
                        file=sys.stderr,
                    )
            finally:
                stop(proc)
    return results


def medians(results: dict[str, dict[str, list[Sample]]]) -> dict[str, dict[str, Sample]]:
    return {
        name: {
            case: Sample(statistics.median(s.rps for s in samples), statistics.median(s.cpu_us for s in samples))
            for case, samples in cases.items()
            if samples
        }
        for name, cases in results.items()
    }


def table(med: dict[str, dict[str, Sample]], servers: dict, title: str) -> str:
    peers = [name for name, spec in servers.items() if spec[2]]
    lines = [
        f"### {title}",
        "",
        "| case | server | requests/s | CPU µs/req | req/s ÷ redis | CPU ÷ redis | req/s ÷ best peer | CPU ÷ best peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in CASES:
        redis = med.get("redis-server", {}).get(case)
        best_rps = max((med[p][case] for p in peers if case in med[p]), key=lambda s: s.rps, default=None)
        best_cpu = min((med[p][case] for p in peers if case in med[p]), key=lambda s: s.cpu_us, default=None)
        for name in med:
            s = med[name].get(case)
            if s is None:
                continue
            cells = [
                case,
                name,
                f"{s.rps:,.0f}",
                f"{s.cpu_us:.2f}",
                _ratio(s.rps, redis.rps if redis else None),
                _ratio(s.cpu_us, redis.cpu_us if redis else None),
                _ratio(s.rps, best_rps.rps if best_rps else None),
                _ratio(s.cpu_us, best_cpu.cpu_us if best_cpu else None),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def targets(med: dict[str, dict[str, Sample]], servers: dict, name: str) -> list[str]:
    """The targets for the pinned layout, each with its measured ratio, for prefork_tcp ``name``."""
    ours = med.get(name, {})
    peers = [name for name, spec in servers.items() if spec[2]]
    out = [f"Targets, {name}:"]

    def check(label: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        if value is None:
            out.append(f"- {label}: not measured")
            return
        ok = value >= limit if higher_is_better else value <= limit
        out.append(f"- {label}: {value:.2f} ({'met' if ok else 'MISSED'}; target {'≥' if higher_is_better else '≤'} {limit})")

    def best(case: str, key) -> Sample | None:
        candidates = [med[p][case] for p in peers if case in med[p]]
        return key(candidates) if candidates else None

    p16_rps = best("-P 16", lambda c: max(c, key=lambda s: s.rps))
    p16_cpu = best("-P 16", lambda c: min(c, key=lambda s: s.cpu_us))
    check("-P 16 requests/s ÷ best peer", ours["-P 16"].rps / p16_rps.rps if p16_rps and "-P 16" in ours else None, 1.0, True)
    check("-P 16 CPU/req ÷ best peer", ours["-P 16"].cpu_us / p16_cpu.cpu_us if p16_cpu and "-P 16" in ours else None, 1.0, False)
    redis = med.get("redis-server", {}).get("-P 1")
    check("-P 1 CPU/req ÷ redis-server", ours["-P 1"].cpu_us / redis.cpu_us if redis and "-P 1" in ours else None, 1.0, False)
    uvloops = [med[name]["-k 0"] for name in med if name.startswith("uvloop") and "-k 0" in med[name]]
    uv = min(uvloops, key=lambda sample: sample.cpu_us, default=None)
    check("-k 0 CPU/connection ÷ uvloop Protocol", ours["-k 0"].cpu_us / uv.cpu_us if uv and "-k 0" in ours else None, 1.0, False)
    return out


def chart(med: dict[str, dict[str, Sample]], path: str) -> None:
    """Requests/s (top row) and CPU per request (bottom row), one column per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(med)
    colors = ["#d62728" if n.startswith("prefork_tcp") else ("#7f7f7f" if n == "redis-server" else "#1f77b4") for n in names]
    fig, axes = plt.subplots(2, len(CASES), figsize=(5 * len(CASES), 8), sharey=True)
    rows = [
        (lambda s: s.rps / 1000, "thousand requests/s", "{:.0f}k"),
        (lambda s: s.cpu_us, "server CPU µs per request (per connection at -k 0)", "{:.2f}"),
    ]
    for row, (value_of, label, text) in zip(axes, rows, strict=True):
        for ax, case in zip(row, CASES, strict=True):
            values = [value_of(med[n][case]) if case in med[n] else 0 for n in names]
            ax.barh(names, values, color=colors)
            ax.set_title(f"ping_inline {case} -c 50, server on one core", fontsize=10)
            ax.set_xlabel(label, fontsize=9)
            for y, value in enumerate(values):
                ax.text(value, y, " " + text.format(value), va="center", fontsize=8)
    axes[0][0].invert_yaxis()  # shared by every panel
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts (shorter or longer runs)")
    parser.add_argument("--only", action="append", help="run only these servers (repeatable)")
    parser.add_argument("--no-unpinned", action="store_true", help="skip the 2-worker unpinned layout")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--json", help="write the raw samples to this file")
    parser.add_argument("--chart", help="write a bar chart PNG of the pinned layout here")
    parser.add_argument(
        "--baseline", help="also run prefork_tcp from this source tree (a checkout of another commit), to compare a change in one run"
    )
    args = parser.parse_args()
    if args.baseline:
        SERVERS["prefork_tcp (baseline)"] = (["env", f"PYTHONPATH={Path(args.baseline).resolve()}", *prefork(1)], (), False)
        if args.only:
            args.only.append("prefork_tcp (baseline)")
    for tool in ("redis-benchmark", "taskset"):
        if not shutil.which(tool):
            print(f"bench: {tool} is needed (apt-get install redis-tools util-linux)", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("bench: the pinned layout needs two CPUs", file=sys.stderr)
        return 2
    ours = implementation()
    if ours != "compiled":  # nothing to compare the pure Python modules with
        print(f"bench: prefork_tcp runs as {ours} here", file=sys.stderr)
        del SERVERS["prefork_tcp (pure Python)"], UNPINNED["prefork_tcp (2 workers, pure Python)"]
    servers, notes = available({k: v for k, v in SERVERS.items() if not args.only or k in args.only})
    started = time.monotonic()
    pinned = medians(run_layout(servers, args.rounds, args.scale, pinned=True))
    report = [
        table(pinned, servers, f"Pinned: server on CPU 0, client on CPU 1 (median of {args.rounds} rounds)"),
        *(line for name in pinned if name.startswith("prefork_tcp") for line in targets(pinned, servers, name)),
        "",
    ]
    print("\n".join(report), flush=True)  # shown even if the unpinned layout fails
    if args.chart:
        chart(pinned, args.chart)
    unpinned = {}
    rest: list[str] = []
    if not args.no_unpinned:
        unpinned_servers, more = available(UNPINNED)
        notes += more
        unpinned = medians(run_layout(unpinned_servers, args.rounds, args.scale, pinned=False))
        rest.append(table(unpinned, unpinned_servers, "Unpinned: prefork_tcp with 2 workers, uvloop in 2 processes, and redis-server"))
    rest += [f"- {note}" for note in notes]
    rest.append(
        f"\n({time.monotonic() - started:.0f} s; {psutil.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}; prefork_tcp {ours}; `python3 scripts/bench.py --rounds {args.rounds} --scale {args.scale}`)"
    )
    print("\n".join(rest))
    text = "\n".join(report + rest)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        raw = {"pinned": pinned, "unpinned": unpinned}
        Path(args.json).write_text(
            json.dumps(
                {layout: {n: {c: vars(x) for c, x in cs.items()} for n, cs in data.items()} for layout, data in raw.items()}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
