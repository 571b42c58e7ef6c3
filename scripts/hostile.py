#!/usr/bin/env python3
"""Hostile: a bounded attack harness that measures how prefork_tcp holds up against bad clients.

It starts the real server (the echo example on 2 workers, with a control socket, on a free
loopback port) and keeps 8 well-behaved clients doing echo round trips with random payloads
of 16-200 bytes every 2-5 ms, each answer checked byte for byte. They run in a process of
their own, so the attackers in this one cannot delay them through the GIL. After a baseline
phase with no attack, one phase per attack runs against the same server, one after another:

  1 senders    clients that send echo requests as fast as the socket accepts, never reading
  2 slowloris  500 connections that send nothing, 50 that send one byte a second
  3 giant      megabytes without a delimiter (max_message_size is 1 MiB: they must be closed)
  4 flood      10,000 connections opened as fast as possible, held a second, closed
  5 resets     connect, send part of a request (or a whole one, or nothing), close with RST
  6 control    garbage, deeply nested JSON, a 10 MB line, silent and byte-a-second clients
               on the control socket (each garbage request alone first, to name any that
               kills the master), while real `workers` requests must be answered in 2 s
  7 hup        a broken config (a dozen shapes, a missing file) and SIGHUP, with idle and
               active connections open; then the valid config back and SIGHUP again
  8 kill       SIGKILL the worker that holds the most well-behaved clients; the master must
               replace it, and only that worker's connections may be lost
  idle         1,000 idle connections, clients paused: CPU of every server process over 2 s

Per phase it reports the workers' RSS (sampled every 100 ms: peak of the sum and of the
largest), the well-behaved clients' p50/p99, answers and errors, what the attack's own
connections got, about how many connections the workers held, and the server's log volume.

Targets (exit status 1 if any is broken, each broken one named):
- well-behaved clients see no error, except connections of a SIGKILLed worker, which the
  kill phase reports as "lost" (SPEC §2 allows that one case);
- their p99 during every attack is at most 5x the baseline p99 (``--p99-factor``), where
  the baseline is floored at 1 ms: loopback p99s are a fraction of a millisecond and noisy;
- each worker's RSS stays below 64 MiB + 8 KiB per connection it holds;
- no server process uses more than half a core while only idle connections are open;
- giant messages are closed; control requests are answered within 2 s under attack;
  a broken config on HUP keeps the master, its workers and their connections; a SIGKILLed
  worker is replaced;
- the master is alive at the end (a master that dies is restarted so that the remaining
  phases still run, and the run fails), and SIGTERM stops it with exit 0 within 30 s.

It raises its own open-files soft limit to the hard limit (the server inherits it); if the
hard limit is too low it says what it needs and scales the flood down. Only 127.0.0.1 and a
unix socket in a temporary directory are used, every socket has a timeout, every phase is
bounded in connections and time, and the server is killed by pid if anything goes wrong.

    python3 scripts/hostile.py [--quick] [--seconds N] [--json FILE]

`--seconds` is the length of each phase (default 5: about 50-60 s in all); `--quick` runs
1.5 s phases with a 2,000-connection flood (about 20-30 s in all). docs/hostile.md has more.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import json
import math
import multiprocessing
import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP = "prefork_tcp.examples.echo:main"
WORKERS = 2
CLIENTS = 8
CLIENT_TIMEOUT = 5.0  # a round trip slower than this is an error
P99_FACTOR = 5.0
P99_FLOOR = 0.001  # seconds: the baseline p99 used is never below this
ATTACKER_NICE = 10  # the attack threads' scheduling priority (see Harness.__init__)
RSS_BASE = 64 * 2**20
RSS_PER_CONNECTION = 8 * 2**10
IDLE_CPU_LIMIT = 0.5  # of one core
CONTROL_ANSWER_LIMIT = 2.0
STOP_LIMIT = 30.0
SAMPLE_EVERY = 0.1
GIANT_PAUSE = 0.05  # seconds between one giant message's end and the next one's start, per sender
FD_SLACK = 1000  # descriptors this process needs beside the flood
NO_CRLF = bytes.maketrans(b"\r\n", b"ab")
LOSS_KINDS = {"eof", "reset", "broken pipe", "timeout"}  # how a client sees its worker die


class HarnessError(Exception):
    """The harness could not do its job (the server would not start, ...)."""


@dataclass(frozen=True)
class Scale:
    """How hard each attack pushes."""

    seconds: float
    senders: int = 4
    silent: int = 500
    tricklers: int = 50
    giants: int = 4
    giant_cap: int = 32 * 2**20  # bytes one giant connection may send before we call it unbounded
    flood: int = 10_000
    resets: int = 20_000  # at most this many RST connections per phase
    hup_idle: int = 100
    kill_idle: int = 20
    idle: int = 1_000
    p99_factor: float = P99_FACTOR  # the clients' p99 under attack may be this many times the baseline's

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Scale:
        if args.quick:
            scale = cls(
                seconds=args.seconds or 1.5,
                senders=2,
                silent=200,
                tricklers=20,
                giants=2,
                giant_cap=16 * 2**20,
                flood=2_000,
                resets=4_000,
                hup_idle=50,
            )
        else:
            scale = cls(seconds=args.seconds or 5.0)
        given = {"flood": args.flood, "p99_factor": args.p99_factor}  # 0: not given
        return dataclasses.replace(scale, **{name: value for name, value in given.items() if value})


# -- small socket helpers -------------------------------------------------------------------


def error_name(exc: BaseException) -> str:
    """Return a short name for a socket error: 'timeout', 'reset', 'ECONNREFUSED', ..."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def make_payload(rng: random.Random) -> bytes:
    """Return one echo request: 16-200 random bytes without CR or LF, then CRLF."""
    return rng.randbytes(rng.randint(16, 200)).translate(NO_CRLF) + b"\r\n"


def echo_once(sock: socket.socket, payload: bytes) -> str:
    """Send one request and read its answer; return '' if it came back byte for byte, else what went wrong."""
    try:
        sock.sendall(payload)
        answer = b""
        while len(answer) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                return "eof"
            answer += chunk
    except OSError as exc:
        return error_name(exc)
    return "" if answer == payload else "wrong answer"


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def connect(port: int, timeout: float = 3.0) -> socket.socket:
    """Return a blocking loopback connection with ``timeout`` on every operation."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def mib(size: float) -> str:
    return f"{size / 2**20:.1f}"


# -- the well-behaved clients (their own process) -------------------------------------------


def client_loop(
    index: int, port: Any, active: Any, stop: Any, parent: int, successes: list[tuple[float, float]], errors: list[tuple[float, str, int]]
) -> None:
    """One client: echo round trips on one connection, reconnecting after an error."""
    rng = random.Random(index * 7919 + os.getpid())
    sock: socket.socket | None = None
    local_port = 0
    while not stop.is_set() and os.getppid() == parent:
        if not active.is_set():
            time.sleep(0.05)
            continue
        if sock is None:
            try:
                sock = connect(port.value, CLIENT_TIMEOUT)
            except OSError as exc:
                errors.append((time.monotonic(), f"connect: {error_name(exc)}", 0))
                time.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local_port = sock.getsockname()[1]
        payload = make_payload(rng)
        started = time.perf_counter()
        failure = echo_once(sock, payload)
        if not failure:
            successes.append((time.monotonic(), time.perf_counter() - started))
            time.sleep(rng.uniform(0.002, 0.005))
            continue
        errors.append((time.monotonic(), failure, local_port))
        sock.close()
        sock = None
    if sock is not None:
        sock.close()


def client_process(port: Any, count: int, active: Any, stop: Any, out: Any, parent: int) -> None:
    """Run ``count`` clients until ``stop``; send back (successes, errors) with monotonic timestamps."""
    successes: list[tuple[float, float]] = []
    errors: list[tuple[float, str, int]] = []
    threads = [
        threading.Thread(target=client_loop, args=(i, port, active, stop, parent, successes, errors), daemon=True) for i in range(count)
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(0.5) and os.getppid() == parent:
        pass  # an orphan (the harness was killed) stops by itself
    deadline = time.monotonic() + CLIENT_TIMEOUT + 2
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    try:
        out.send((successes, errors))
        out.close()
    except OSError:
        pass


class WellBehaved:
    """The well-behaved clients: a child process that can be paused, pointed at a new port, and stopped."""

    def __init__(self, port: int, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = ctx.Value("i", port)
        self.active = ctx.Event()
        self.active.set()
        self.stop_event = ctx.Event()
        self.receiver, sender = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=client_process,
            daemon=True,
            name="hostile-clients",
            args=(self.port, count, self.active, self.stop_event, sender, os.getpid()),
        )
        self.proc.start()
        sender.close()
        self.started = time.monotonic()

    def local_ports(self, server_port: int) -> set[int]:
        """Return the clients' local ports of their connections to ``server_port``."""
        try:
            conns = psutil.Process(self.proc.pid).net_connections("tcp")
        except psutil.Error:
            return set()
        return {c.laddr.port for c in conns if c.raddr and c.raddr.port == server_port}

    def finish(self) -> tuple[list[tuple[float, float]], list[tuple[float, str, int]]]:
        """Stop the clients and return what they recorded."""
        self.stop_event.set()
        data: tuple[list[tuple[float, float]], list[tuple[float, str, int]]] = ([], [])
        if self.receiver.poll(CLIENT_TIMEOUT + 15):
            data = self.receiver.recv()
        self.proc.join(5)
        self.kill()
        return data

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# -- the server -------------------------------------------------------------------------------


def _die_with_harness() -> None:
    """In the server's process before exec: get SIGTERM if the harness dies, so nothing is left behind."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """One ``prefork-tcp serve`` of the echo example with 2 workers; its log lines kept with their times."""

    def __init__(self, workdir: str, name: str) -> None:
        self.control_path = os.path.join(workdir, f"{name}.sock")
        self.config_path = os.path.join(workdir, f"{name}.toml")
        self.control_section = f'[control]\nsocket = "{self.control_path}"\n'
        self.config_text = f'{self.control_section}\n[tcp.servers.echo]\naddr = "tcp://{HOST}:0"\n'
        self.write_config(self.config_text.encode())
        self.lines: list[tuple[float, str]] = []
        self.seen_workers: dict[int, psutil.Process] = {}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork_tcp", "serve", APP, "-c", self.config_path, "-w", str(WORKERS)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            preexec_fn=_die_with_harness,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        self.port = self._wait_ready()

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))

    def _wait_ready(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            text = "\n".join(line for _, line in list(self.lines))
            listening = re.search(r"listening at tcp://127\.0\.0\.1:(\d+) \(server echo\)", text)
            if listening and re.search(r"serving: \d+ workers ready", text):
                return int(listening.group(1))
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise HarnessError(f"the server did not start (exit code {self.proc.poll()}); its log:\n{self.log_tail(30)}")
            time.sleep(0.05)

    def write_config(self, content: bytes | None) -> None:
        """Replace the config file (``None`` removes it)."""
        if content is None:
            if os.path.exists(self.config_path):
                os.remove(self.config_path)
            return
        with open(self.config_path, "wb") as fh:
            fh.write(content)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def workers(self) -> list[psutil.Process]:
        """Return the master's children (the workers), remembering each for the cleanup."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        for child in children:
            self.seen_workers.setdefault(child.pid, child)
        return children

    def log_since(self, since: float) -> list[str]:
        return [line for t, line in list(self.lines) if t >= since]

    def log_tail(self, count: int) -> str:
        return "\n".join(line for _, line in list(self.lines)[-count:])

    def stop(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM the master; return its exit code (None if it outlived ``timeout``) and how long it took."""
        started = time.monotonic()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def leftover_workers(self) -> list[int]:
        left = []
        for pid, proc in self.seen_workers.items():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                pass
        return left

    def kill(self) -> None:
        """SIGKILL the master and every worker it ever had that is still running (by pid, identity checked)."""
        if self.proc.poll() is None:
            self.workers()
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for proc in self.seen_workers.values():
            try:
                proc.kill()  # psutil checks the pid still names the same process
            except psutil.Error:
                pass
        self._reader.join(2)


class Sampler(threading.Thread):
    """Every 100 ms: each worker's RSS and open descriptors, and the master's RSS."""

    def __init__(self, harness: Harness) -> None:
        super().__init__(daemon=True, name="hostile-sampler")
        self.harness = harness
        self.samples: list[tuple[float, dict[int, tuple[int, int]], int]] = []  # (time, {pid: (rss, fds)}, master rss)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            server = self.harness.server
            per_worker: dict[int, tuple[int, int]] = {}
            for worker in server.workers():
                try:
                    per_worker[worker.pid] = (worker.memory_info().rss, worker.num_fds())
                except psutil.Error:
                    pass
            try:
                master_rss = psutil.Process(server.proc.pid).memory_info().rss
            except psutil.Error:
                master_rss = 0
            self.samples.append((time.monotonic(), per_worker, master_rss))

    def stop(self) -> None:
        self.done.set()
        self.join(5)


# -- attack connections ------------------------------------------------------------------------


@dataclass
class Held:
    """One attack connection held open, and what the server did with it."""

    sock: socket.socket
    kind: str
    port: int  # our local port, to tell which worker owns it
    opened: float
    ended: float = 0.0
    how: str = ""  # "closed" (FIN) or "reset", once the server ended it
    received: int = 0  # bytes the server sent


class HeldSet:
    """Attack connections watched in one selector: which the server ended, when, and what it sent."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.held: list[Held] = []
        self.failed: dict[str, Counter[str]] = {}

    def open(self, port: int, kind: str, timeout: float = 3.0) -> Held | None:
        try:
            sock = connect(port, timeout)
            sock.setblocking(False)
        except OSError as exc:
            self.failed.setdefault(kind, Counter())[error_name(exc)] += 1
            return None
        held = Held(sock, kind, sock.getsockname()[1], time.monotonic())
        self.selector.register(sock, selectors.EVENT_READ, held)
        self.held.append(held)
        return held

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            held: Held = key.data
            try:
                data = held.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self.end(held, "reset")
                continue
            if data:
                held.received += len(data)
            else:
                self.end(held, "closed")

    def end(self, held: Held, how: str) -> None:
        held.ended, held.how = time.monotonic(), how
        self.selector.unregister(held.sock)
        held.sock.close()

    def watch(self, until: float) -> None:
        while (left := until - time.monotonic()) > 0:
            self.poll(min(left, 0.1))

    def still_open(self) -> list[Held]:
        return [h for h in self.held if not h.how]

    def close_all(self, rst: bool = False) -> None:
        for held in self.still_open():
            self.selector.unregister(held.sock)
            if rst:
                reset_close(held.sock)
            else:
                held.sock.close()
        self.selector.close()

    def summary(self, kind: str) -> dict[str, Any]:
        held = [h for h in self.held if h.kind == kind]
        ended = sorted(h.ended - h.opened for h in held if h.how)
        return {
            "opened": len(held),
            "failed_to_open": dict(self.failed.get(kind, {})),
            "closed_by_server": sum(h.how == "closed" for h in held),
            "reset_by_server": sum(h.how == "reset" for h in held),
            "still_open": sum(not h.how for h in held),
            "bytes_received": sum(h.received for h in held),
            "ended_after_s": [round(ended[0], 2), round(statistics.median(ended), 2), round(ended[-1], 2)] if ended else None,
        }

    def describe(self, kind: str) -> str:
        s = self.summary(kind)
        text = f"{s['opened']} {kind}: {s['still_open']} still open"
        if s["closed_by_server"] or s["reset_by_server"]:
            low, mid, high = s["ended_after_s"]
            text += f", {s['closed_by_server']} closed and {s['reset_by_server']} reset by the server after {low}-{high} s (median {mid})"
        if s["bytes_received"]:
            text += f", {s['bytes_received']} bytes received"
        if s["failed_to_open"]:
            text += f", {sum(s['failed_to_open'].values())} failed to connect {dict(s['failed_to_open'])}"
        return text


@dataclass
class Outcome:
    """What one attack's own connections got, and the attack's own checks that failed."""

    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)


# -- the attacks ---------------------------------------------------------------------------------
# Each runs until ``until`` (a few may overrun by a few bounded seconds) and returns an Outcome.


def attack_senders(h: Harness, until: float) -> Outcome:
    """Clients that send echo requests as fast as the socket accepts and never read."""
    block = b"".join(b"%06d " % i + b"x" * 90 + b"\r\n" for i in range(2500))  # ~240 KB of whole requests
    view = memoryview(block)
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    sent: list[int] = []
    ended: dict[int, str] = {}
    for i in range(h.scale.senders):
        try:
            sock = connect(h.port)
        except OSError as exc:
            ended[i] = f"connect: {error_name(exc)}"
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_WRITE, len(socks))
        socks.append(sock)
        sent.append(0)
    mark = until - min(1.0, h.scale.seconds / 2)
    sent_at_mark = -1
    try:
        while (now := time.monotonic()) < until:
            if now >= mark and sent_at_mark < 0:
                sent_at_mark = sum(sent)
            for key, _ in selector.select(min(0.1, until - now)):
                i = key.data
                try:
                    sent[i] += socks[i].send(view[sent[i] % len(block) :])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    ended[i] = f"{error_name(exc)} after {mib(sent[i])} MiB"
                    selector.unregister(socks[i])
    finally:
        selector.close()
        for sock in socks:
            reset_close(sock)
    if not socks:
        return Outcome("no sender could connect", {"ended_by_server": ended}, ["no never-reading sender could connect"])
    late = sum(sent) - max(sent_at_mark, 0)
    window = until - mark
    return Outcome(
        f"{len(socks)} senders pushed {mib(max(sent))} MiB at most each ({mib(sum(sent))} MiB in all), "
        f"{mib(late)} MiB in the last {window:.1f} s; {len(ended)} ended by the server {sorted(ended.values())}",
        {
            "senders": len(socks),
            "mib_sent_each": [round(s / 2**20, 2) for s in sent],
            "mib_in_last_window": round(late / 2**20, 2),
            "last_window_s": round(window, 2),
            "ended_by_server": ended,
        },
    )


def attack_slowloris(h: Harness, until: float) -> Outcome:
    """Silent connections, and connections that send one byte a second and never a delimiter."""
    held = HeldSet()
    for _ in range(h.scale.silent):
        held.open(h.port, "silent")
    tricklers = [c for _ in range(h.scale.tricklers) if (c := held.open(h.port, "trickling")) is not None]
    next_byte = time.monotonic()
    try:
        while (now := time.monotonic()) < until:
            if now >= next_byte:
                for conn in tricklers:
                    if not conn.how:
                        try:
                            conn.sock.send(b"z")
                        except OSError:
                            held.end(conn, "reset")
                next_byte += 1.0
            held.poll(min(0.1, max(0.0, min(until, next_byte) - now)))
    finally:
        held.close_all()
    return Outcome(
        f"{held.describe('silent')}; {held.describe('trickling')}",
        {"silent": held.summary("silent"), "trickling": held.summary("trickling")},
    )


def attack_giant(h: Harness, until: float) -> Outcome:
    """Messages of megabytes without a delimiter; each connection must be closed by the server.

    A connection sends until the server ends it (seen as EOF or a reset on either direction),
    it has sent ``giant_cap`` bytes, or 5 s have passed; none starts after ``until``. Loopback
    buffers absorb several MiB, so the bytes sent overstate what the server read.

    Each sender waits GIANT_PAUSE between messages: this phase tests closing and memory, not
    bandwidth. Back to back, the harness copied about 2 GB/s into loopback buffers that the
    server then discards, a whole core of a 2-core machine, and the clients' p99 measured that
    as much as the server.
    """
    chunk = b"G" * 65536
    attempts: list[dict[str, Any]] = []
    lock = threading.Lock()

    def sender() -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                sock = connect(h.port, 2.0)
            except OSError as exc:
                with lock:
                    attempts.append({"outcome": f"connect: {error_name(exc)}", "sent": 0, "seconds": 0.0})
                time.sleep(0.1)
                continue
            sock.setblocking(False)
            sent, outcome = 0, ""
            while not outcome:
                if time.monotonic() - started > 5.0:
                    outcome = "still open after 5 s" if sent < h.scale.giant_cap else "still open after the cap and 5 s"
                    break
                readable, writable, _ = select.select([sock], [sock] if sent < h.scale.giant_cap else [], [], 0.25)
                try:
                    if readable and not sock.recv(65536):
                        outcome = "ended by the server (eof)"
                    elif writable:
                        sent += sock.send(chunk)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    outcome = f"ended by the server ({error_name(exc)})"
            reset_close(sock)
            with lock:
                attempts.append({"outcome": outcome, "sent": sent, "seconds": round(time.monotonic() - started, 3)})
            time.sleep(GIANT_PAUSE)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(h.scale.giants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(until - time.monotonic() + 10)
    closed = [a for a in attempts if a["outcome"].startswith("ended")]
    unclosed = [a for a in attempts if a["outcome"].startswith("still")]
    outcomes = Counter(a["outcome"] for a in attempts)
    summary = f"{len(attempts)} giant messages: {dict(outcomes)}"
    if closed:
        summary += (
            f"; each closed after {mib(statistics.median(a['sent'] for a in closed))} MiB sent "
            f"(kernel buffers included) and {statistics.median(a['seconds'] for a in closed) * 1e3:.0f} ms (medians)"
        )
    broken = (
        [
            f"{len(unclosed)} of {len(attempts)} giant unterminated messages were not closed by the server "
            f"(e.g. {mib(unclosed[0]['sent'])} MiB sent in {unclosed[0]['seconds']} s)"
        ]
        if unclosed
        else []
    )
    if not closed and not unclosed:
        broken.append("no giant message could be sent at all")
    return Outcome(summary, {"attempts": attempts}, broken)


def attack_flood(h: Harness, until: float) -> Outcome:
    """Open ``flood`` connections as fast as possible, hold them a second, close them."""
    held = HeldSet()
    started = time.monotonic()
    for i in range(h.scale.flood):
        if time.monotonic() > until + 10:
            break  # bounded even if every connect waits for a SYN retransmission
        held.open(h.port, "flood", timeout=3.0)
        if i % 256 == 0:
            held.poll(0)
    opening = time.monotonic() - started
    held.watch(time.monotonic() + 1.0)
    accepted = h.server_connections()
    held.close_all()
    s = held.summary("flood")
    return Outcome(
        f"{s['opened']} of {h.scale.flood} opened in {opening:.1f} s, the workers held about {accepted} after 1 s; "
        f"{held.describe('flood')}",
        {**s, "requested": h.scale.flood, "opening_s": round(opening, 2), "workers_held_after_1s": accepted},
    )


def attack_resets(h: Harness, until: float) -> Outcome:
    """Connect, send part of a request (or a whole one, or nothing), close with RST; over and over."""
    variants = [b"a partial request with no delim", b"a whole request\r\n", b""]
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    per_thread = h.scale.resets // 2

    def storm(seed: int) -> None:
        for i in range(per_thread):
            if time.monotonic() >= until:
                return
            data = variants[(i + seed) % len(variants)]
            try:
                sock = connect(h.port, 2.0)
            except OSError as exc:
                failed[error_name(exc)] += 1
                time.sleep(0.01)
                continue
            try:
                if data:
                    sock.sendall(data)
            except OSError as exc:
                failed[f"send: {error_name(exc)}"] += 1
            reset_close(sock)
            done["partial" if data.endswith(b"delim") else "whole" if data else "empty"] += 1

    threads = [threading.Thread(target=storm, args=(seed,), daemon=True) for seed in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(until - time.monotonic() + 10)
    took = time.monotonic() - started
    total = sum(done.values())
    return Outcome(
        f"{total} connections reset ({total / took:.0f}/s: {dict(done)}); {sum(failed.values())} failed {dict(failed)}",
        {"reset": dict(done), "failed": dict(failed), "per_second": round(total / took)},
    )


def control_payloads() -> list[tuple[str, bytes]]:
    """Garbage for the control socket (never a valid command that would change the server)."""
    return [
        ("64 KiB of random bytes", os.urandom(65536)),
        ("a random line", os.urandom(300).translate(NO_CRLF) + b"\n"),
        ('"[" * 100000', b"[" * 100_000 + b"\n"),
        ('"[" * 4000 (under a 4 KiB line limit)', b"[" * 4000 + b"\n"),
        ('{"command": "workers", "x": [[[...3000 deep', b'{"command": "workers", "x": ' + b"[" * 3000 + b"\n"),
        ("a 10 MB line", b"x" * 10_000_000 + b"\n"),
        ("not UTF-8", b'{"command": "\xff\xfe"}\n'),
        ("a JSON string", b'"workers"\n'),
        ("null", b"null\n"),
        ("command is a number", b'{"command": 5}\n'),
        ("unknown command", b'{"command": "no-such-command"}\n'),
        ("close with a table for a uuid", b'{"command": "close", "uuid": {"a": [1]}}\n'),
        ("NUL bytes", b'{"command": "workers"}' + b"\0" * 64 + b"\n"),
        ("an empty line", b"\n"),
    ]


def control_client(path: str, payload: bytes, timeout: float = 3.0) -> tuple[str, float]:
    """Send ``payload`` to the control socket; return what came back and how long it took."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        try:
            sock.sendall(payload)
        except OSError as exc:
            answer = b""
            try:
                answer = sock.recv(4096)
            except OSError:
                pass
            if answer:
                return f"answered before reading it all: {answer[:60]!r}", time.monotonic() - started
            return f"ended while sending ({error_name(exc)})", time.monotonic() - started
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
        return (f"answered {answer[:70]!r}" if answer else "closed without an answer"), took
    except OSError as exc:
        return f"{error_name(exc)}", time.monotonic() - started
    finally:
        sock.close()


def master_exited(server: Server, since: float) -> bool:
    """Return whether the master has exited, waiting up to 5 s for one that printed a traceback since ``since``."""
    if server.alive() and any("Traceback" in line for line in server.log_since(since)):
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    return not server.alive()


def attack_control(h: Harness, until: float) -> Outcome:
    """Garbage and trickling clients on the control socket while real ``workers`` requests must be answered.

    First each garbage request alone, to name any that kills the master (which is then restarted);
    then, for at least 3 s, the survivable ones over and over with silent and byte-a-second clients,
    while a real ``workers`` request is made every 300 ms and must be answered within 2 s.
    """
    one_by_one: list[dict[str, Any]] = []
    survivable: list[tuple[str, bytes]] = []
    fatal: list[str] = []
    for name, payload in control_payloads():
        sent_at = time.monotonic()
        outcome, took = control_client(h.server.control_path, payload)
        one_by_one.append({"payload": name, "outcome": outcome, "seconds": round(took, 2)})
        if master_exited(h.server, sent_at):
            fatal.append(name)
            h.restart(f"after the control request {name}")
        else:
            survivable.append((name, payload))
    until = max(until, time.monotonic() + 3.0)
    path = h.server.control_path
    garbage: list[dict[str, Any]] = []
    probes: list[tuple[float, str]] = []
    tricklers: list[dict[str, Any]] = []
    cli: dict[str, Any] = {}

    def trickle(index: int) -> None:
        text = b'{"command": "workers"' + b" " * 100  # one byte a second: never finishes in a phase
        record: dict[str, Any] = {"client": f"trickler {index}" if index >= 0 else "silent", "outcome": "still open at the end"}
        tricklers.append(record)
        started = time.monotonic()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(path)
            sent = 0
            while time.monotonic() < until:
                if index >= 0:
                    sock.send(text[sent % len(text) : sent % len(text) + 1])
                    sent += 1
                try:
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
                what = f"answered {answer[:60]!r}" if answer else "closed"
                record["outcome"] = f"{what} by the master after {time.monotonic() - started:.1f} s"
                return
        except OSError as exc:
            record["outcome"] = f"{error_name(exc)} after {time.monotonic() - started:.1f} s"
        finally:
            sock.close()

    def spray(name: str, payload: bytes) -> None:
        for _ in range(20):
            if time.monotonic() >= until:
                return
            outcome, took = control_client(path, payload)
            garbage.append({"payload": name, "outcome": outcome, "seconds": round(took, 2)})
            time.sleep(0.05)

    def probe() -> None:
        started = time.monotonic()
        while True:  # a full backlog (EAGAIN) or a missing listener is retried while the answer could still be in time
            outcome, _ = control_client(path, b'{"command": "workers"}\n', timeout=CLIENT_TIMEOUT)
            if outcome not in ("EAGAIN", "ECONNREFUSED", "ENOENT") or time.monotonic() - started > CONTROL_ANSWER_LIMIT:
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        probes.append((took, "ok" if outcome.startswith("answered") and '"ok": true' in outcome else outcome))

    def probe_every_300ms() -> None:
        time.sleep(0.2)  # let the attack start first
        started: list[threading.Thread] = []
        while time.monotonic() < until and len(started) < 40:
            started.append(threading.Thread(target=probe, daemon=True))
            started[-1].start()
            time.sleep(0.3)
        for thread in started:
            thread.join(CLIENT_TIMEOUT + 1)

    def run_cli() -> None:
        time.sleep(0.3)
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        try:
            result = subprocess.run(
                [sys.executable, "-m", "prefork_tcp", "workers", "--control", path],
                capture_output=True,
                text=True,
                timeout=15,
                env=env,
                check=False,
            )
            cli.update(exit_code=result.returncode, lines=len(result.stdout.splitlines()))
        except subprocess.TimeoutExpired:
            cli.update(exit_code=None, lines=0)
        cli["seconds"] = round(time.monotonic() - started, 2)

    threads = [threading.Thread(target=trickle, args=(i,), daemon=True) for i in (-1, 0, 1)]
    threads += [threading.Thread(target=spray, args=payload, daemon=True) for payload in survivable]
    threads += [threading.Thread(target=f, daemon=True) for f in (probe_every_300ms, run_cli)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(until - time.monotonic() + 20)
    slow = [(round(took, 2), what) for took, what in probes if what != "ok" or took > CONTROL_ANSWER_LIMIT]
    broken = [f"the master died on the control request {name}" for name in fatal]
    if not probes:
        broken.append("no management request could be made")
    elif slow:
        broken.append(f"{len(slow)} of {len(probes)} `workers` requests not answered within {CONTROL_ANSWER_LIMIT:.0f} s: {slow[:3]}")
    outcomes = Counter(f"{g['payload']}: {g['outcome'][:50]}" for g in garbage)
    kinds = Counter(g["outcome"].split(" ")[0] for g in garbage)
    answered = [t for t, w in probes if w == "ok"]
    summary = (
        ("killed the master: " + ", ".join(fatal) + "; then " if fatal else "")
        + f"{len(answered)} of {len(probes)} `workers` requests answered"
        + (f" (slowest {max(answered):.2f} s)" if answered else "")
        + f", {len(slow)} late or unanswered "
        f"{dict(Counter(w for _, w in probes if w != 'ok'))}; "
        f"the CLI took {cli.get('seconds')} s (exit {cli.get('exit_code')}); {len(garbage)} garbage requests {dict(kinds)}; "
        + "; ".join(f"{r['client']}: {r['outcome']}" for r in tricklers)
    )
    return Outcome(
        summary,
        {
            "one_by_one": one_by_one,
            "fatal": fatal,
            "probes": [(round(t, 3), w) for t, w in probes],
            "cli": cli,
            "garbage": dict(outcomes),
            "tricklers": tricklers,
        },
        broken,
    )


def broken_configs(server: Server) -> list[tuple[str, bytes | None]]:
    """Configs a tired operator might HUP the master with; ``None`` removes the file."""
    valid = server.config_text
    return [
        ("tcp = 1", b"tcp = 1\n"),
        ("a TOML syntax error", (valid + "\n[tcp.servers.echo\naddr = \n").encode()),
        ("not UTF-8", b"\xff\xfe\x00" + bytes(range(256))),
        ("an array nested 5,000 deep", b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("an empty file", b""),
        ("servers is an array", b"[tcp]\nservers = [1, 2]\n"),
        ("addr is a number", (server.control_section + "[tcp.servers.echo]\naddr = 5\n").encode()),
        ("max_jobs = -5", (valid + "[tcp.pool]\nmax_jobs = -5\n").encode()),
        ('watch_tick = "1ns"', (valid + '[tcp.pool.supervisor]\nwatch_tick = "1ns"\n').encode()),
        ("an unknown key", (valid + "[tcp.pool]\nnum_wokers = 2\n").encode()),
        ("a log file in a missing directory", (valid + '[log]\nfile = "/nonexistent-hostile-dir/x/server.log"\n').encode()),
        ("the server renamed", (server.control_section + f'[tcp.servers.other]\naddr = "tcp://{HOST}:0"\n').encode()),
        ("the config file removed", None),
    ]


def wait_for_reaction(server: Server, since: float, timeout: float = 2.0) -> str:
    """Return the master's first log line about a reload since ``since`` ('' if none within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        said = [line for line in server.log_since(since) if re.search(r"config|reload|Traceback|Error", line)]
        if said or not server.alive() or time.monotonic() > deadline:
            return said[0] if said else ""
        time.sleep(0.02)


def attack_hup(h: Harness, until: float) -> Outcome:
    """SIGHUP with broken configs while connections are open; then the valid config back and SIGHUP.

    A master that dies is restarted (which fails the run) so that every broken config is tried.
    """
    pause = max(0.1, min(0.4, (until - time.monotonic()) / 16))
    held = HeldSet()
    for _ in range(h.scale.hup_idle):
        held.open(h.port, "idle")
    rng = random.Random(7)
    active: list[socket.socket] = []

    def reconnect_active() -> None:
        for sock in active:
            sock.close()
        active[:] = [connect(h.port, CLIENT_TIMEOUT) for _ in range(16)]

    def lost_active() -> int:
        return sum(1 for sock in active if echo_once(sock, make_payload(rng)))

    reconnect_active()
    before = {w.pid for w in h.server.workers()}
    reactions: list[dict[str, Any]] = []
    broken: list[str] = []
    valid: dict[str, Any] = {}
    try:
        for index in range(len(broken_configs(h.server))):
            server = h.server
            name, content = broken_configs(server)[index]
            server.write_config(content)
            sent_at = time.monotonic()
            os.kill(server.proc.pid, signal.SIGHUP)
            said = wait_for_reaction(server, sent_at)
            time.sleep(pause)  # let a reload that was accepted replace workers
            held.poll(0)
            alive = not master_exited(server, sent_at)
            pids = {w.pid for w in server.workers()}
            reactions.append(
                {
                    "config": name,
                    "master_alive": alive,
                    "workers_kept": alive and pids == before,
                    "active_lost": lost_active() if alive else len(active),
                    "master_said": said[:160],
                }
            )
            if not alive:
                h.restart(f"after SIGHUP with {name}")
                reconnect_active()
                pids = {w.pid for w in h.server.workers()}
            before = pids
        server = h.server
        server.write_config(server.config_text.encode())
        died = [r["config"] for r in reactions if not r["master_alive"]]
        if died:
            broken.append(f"the master died after SIGHUP with: {', '.join(died)}")
        changed = [r["config"] for r in reactions if r["master_alive"] and not r["workers_kept"]]
        if changed:
            broken.append(f"workers replaced after SIGHUP with: {', '.join(changed)}")
        lost = [(r["config"], r["active_lost"]) for r in reactions if r["master_alive"] and r["active_lost"]]
        if lost:
            broken.append(f"active connections lost on a broken-config HUP: {lost}")
        sent_at = time.monotonic()
        os.kill(server.proc.pid, signal.SIGHUP)
        while time.monotonic() < sent_at + 10:
            pids = {w.pid for w in server.workers()}
            if len(pids) == WORKERS and not pids & before:
                break
            held.poll(0.05)
        pids = {w.pid for w in server.workers()}
        valid = {
            "workers_replaced": len(pids) == WORKERS and not pids & before,
            "seconds": round(time.monotonic() - sent_at, 2),
            "master_alive": server.alive(),
            "active_lost": lost_active(),
        }
        if valid["active_lost"]:
            broken.append(f"{valid['active_lost']} of {len(active)} active connections lost on the valid reload")
        held.watch(until)
    finally:
        h.server.write_config(h.server.config_text.encode())
        for sock in active:
            sock.close()
        held.close_all()
    idle = held.summary("idle")
    idle_lost = idle["closed_by_server"] + idle["reset_by_server"]
    if idle_lost:
        broken.append(
            f"{idle_lost} of {idle['opened']} idle connections lost across the HUPs"
            + (" (the master died)" if any(not r["master_alive"] for r in reactions) else "")
        )
    alive_after = [r for r in reactions if r["master_alive"]]
    summary = (
        f"{len(reactions)} broken configs: the master survived {len(alive_after)}, kept its workers after "
        f"{sum(r['workers_kept'] for r in reactions)}, 16 active connections all answered after "
        f"{sum(not r['active_lost'] for r in alive_after)}; the valid config back: workers replaced "
        f"{valid.get('workers_replaced')} in {valid.get('seconds')} s, active connections lost {valid.get('active_lost')}; "
        f"{held.describe('idle')}"
    )
    return Outcome(summary, {"reactions": reactions, "valid_reload": valid, "idle": idle}, broken)


def attack_kill(h: Harness, until: float) -> Outcome:
    """SIGKILL the worker holding the most well-behaved clients; the master must replace it."""
    server = h.server
    held = HeldSet()
    for _ in range(h.scale.kill_idle):
        held.open(h.port, "idle")
    held.watch(time.monotonic() + 0.3)
    client_ports = h.clients.local_ports(h.port)
    owners: dict[int, set[int]] = {}
    workers = server.workers()
    for worker in workers:
        try:
            owners[worker.pid] = {c.raddr.port for c in worker.net_connections("tcp") if c.raddr and c.laddr.port == h.port}
        except psutil.Error:
            owners[worker.pid] = set()
    if not workers:
        held.close_all()
        return Outcome("no worker to kill", broken=["no worker found to SIGKILL"])
    victim = max(workers, key=lambda w: len(owners[w.pid] & client_ports))
    killed_ports = owners[victim.pid]
    before = {w.pid for w in workers}
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    replaced_after = None
    while time.monotonic() < killed_at + 10:
        pids = {w.pid for w in server.workers()}
        if len(pids) == WORKERS and victim.pid not in pids and pids - before:
            replaced_after = time.monotonic() - killed_at
            break
        held.poll(0.05)
    held.watch(max(until, time.monotonic() + 0.5))
    on_victim = [c for c in held.held if c.port in killed_ports]
    elsewhere_lost = [c for c in held.held if c.port not in killed_ports and c.how]
    held.close_all()
    broken = []
    if replaced_after is None:
        broken.append(f"the SIGKILLed worker {victim.pid} was not replaced within 10 s")
    if elsewhere_lost:
        broken.append(f"{len(elsewhere_lost)} idle connections of the other workers were lost too")
    return Outcome(
        f"killed worker {victim.pid} holding {len(killed_ports & client_ports)} of {len(client_ports)} well-behaved clients "
        f"and {len(on_victim)} of {len(held.held)} idle connections; replaced after "
        f"{f'{replaced_after:.2f} s' if replaced_after is not None else 'never (10 s)'}; idle connections lost: "
        f"{sum(1 for c in on_victim if c.how)} on the killed worker, {len(elsewhere_lost)} elsewhere",
        {
            "killed_pid": victim.pid,
            "killed_at": killed_at,
            "killed_ports": sorted(killed_ports),
            "clients_on_victim": len(killed_ports & client_ports),
            "replaced_after_s": replaced_after,
            "idle_on_victim": len(on_victim),
            "idle_lost_elsewhere": len(elsewhere_lost),
        },
        broken,
    )


def phase_idle(h: Harness, until: float) -> Outcome:
    """Idle connections only (clients paused): CPU of every server process over 2 s."""
    h.clients.active.clear()
    held = HeldSet()
    try:
        time.sleep(0.3)
        for _ in range(h.scale.idle):
            held.open(h.port, "idle")
        deadline = time.monotonic() + 5
        while h.server_connections() < len(held.held) and time.monotonic() < deadline:
            held.poll(0.1)
        held.watch(time.monotonic() + 0.5)
        procs = [psutil.Process(h.server.proc.pid), *h.server.workers()]
        names = ["master"] + [f"worker {p.pid}" for p in procs[1:]]
        before = [p.cpu_times() for p in procs]
        started = time.monotonic()
        held.watch(started + 2.0)
        after = [p.cpu_times() for p in procs]
        wall = time.monotonic() - started
        held_by_workers = h.server_connections()
    except psutil.Error as exc:
        return Outcome(f"could not measure: {exc}", broken=[f"idle CPU not measured: {exc}"])
    finally:
        held.close_all()  # the clients stay paused: this is the last phase
    cpu = {name: round(max(0.0, a.user + a.system - b.user - b.system) / wall, 3) for name, b, a in zip(names, before, after, strict=True)}
    busy = {name: share for name, share in cpu.items() if share > IDLE_CPU_LIMIT}
    return Outcome(
        f"{len(held.held)} idle connections (workers held about {held_by_workers}); CPU over {wall:.1f} s: "
        + ", ".join(f"{name} {share:.1%}" for name, share in cpu.items()),
        {"idle": len(held.held), "workers_held": held_by_workers, "cpu_share": cpu},
        [f"{name} used {share:.0%} of a core with only idle connections open" for name, share in busy.items()],
    )


# -- running the phases -------------------------------------------------------------------------


@dataclass
class Phase:
    key: str
    title: str
    attack: Callable[[Harness, float], Outcome] | None
    traffic: bool = True  # are the well-behaved clients active (p99 checked)?
    min_seconds: float = 0.0  # this phase runs at least this long, whatever --seconds says
    start: float = 0.0
    end: float = 0.0
    outcome: Outcome = field(default_factory=Outcome)
    master_died: list[str] = field(default_factory=list)  # each time the master died in this phase
    harness_error: str = ""


PHASES = [
    Phase("baseline", "baseline (no attack)", None),
    Phase("senders", "1 never-reading senders", attack_senders),
    Phase("slowloris", "2 slowloris (silent, trickling)", attack_slowloris),
    Phase("giant", "3 giant unterminated messages", attack_giant),
    Phase("flood", "4 connection flood", attack_flood),
    Phase("resets", "5 reset storm", attack_resets),
    # long enough to tell an answer within 2 s from none, and for tricklers to matter
    Phase("control", "6 control-socket garbage", attack_control, min_seconds=4.0),
    Phase("hup", "7 HUP with broken configs", attack_hup),
    Phase("kill", "8 SIGKILLed worker", attack_kill),
    Phase("idle", "idle connections (CPU)", phase_idle, traffic=False),
]

#: The attack-specific target each phase's own checks count against.
ATTACK_TARGETS = {
    "giant": "giant unterminated messages are closed by the server",
    "control": f"control requests answered within {CONTROL_ANSWER_LIMIT:.0f} s while the control socket is attacked",
    "hup": "a broken config on HUP keeps the master, its workers and their connections",
    "kill": "a SIGKILLed worker is replaced, and only its connections are lost",
    "idle": f"no server process above {IDLE_CPU_LIMIT:.0%} of a core with only idle connections open",
}


class Harness:
    """The server, the well-behaved clients, the sampler, and the phases run against them."""

    def __init__(self, scale: Scale, workdir: str) -> None:
        self.scale = scale
        self.workdir = workdir
        self.restarts = 0
        self.server = Server(workdir, "hostile")
        self.port = self.server.port
        try:
            time.sleep(0.2)
            self.idle_fds = min((w.num_fds() for w in self.server.workers()), default=0)
            self.clients = WellBehaved(self.port, CLIENTS)
        except BaseException:
            self.server.kill()
            raise
        # The attacks run in this process's threads (all started from here from now on):
        # they give way to the server and the well-behaved clients, which on this one
        # machine compete with them for the same cores, as attackers elsewhere would not.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ATTACKER_NICE)
        except OSError:
            pass
        self.sampler = Sampler(self)
        self.sampler.start()
        self.phases = [dataclasses.replace(phase, master_died=[], outcome=Outcome()) for phase in PHASES]
        self.current = self.phases[0]
        self.old_log: list[tuple[float, str]] = []  # the log of servers that died
        self.stop_result: dict[str, Any] = {}

    def server_connections(self) -> int:
        """About how many connections the workers hold: their descriptors beyond an idle worker's."""
        total = 0
        for worker in self.server.workers():
            try:
                total += max(0, worker.num_fds() - self.idle_fds)
            except psutil.Error:
                pass
        return total

    def restart(self, when: str) -> None:
        """The master died: note it, and start a fresh server so the remaining phases still run."""
        code = self.server.proc.poll()
        self.current.master_died.append(f"{when}: exit code {code}; last log lines:\n{self.server.log_tail(12)}")
        print(
            f"    the master died {when} (exit code {code}); its last log lines:\n      "
            + self.server.log_tail(12).replace("\n", "\n      "),
            flush=True,
        )
        self.server.kill()
        self.old_log += self.server.lines
        self.restarts += 1
        self.server = Server(self.workdir, f"hostile-{self.restarts}")
        self.port = self.server.port
        self.clients.port.value = self.port
        print(f"    restarted the server on port {self.port} for the remaining phases", flush=True)

    def run(self, started: float) -> None:
        for number, phase in enumerate(self.phases):
            phase.start = time.monotonic()
            self.current = phase
            if number:
                self.phases[number - 1].end = phase.start
            until = phase.start + max(self.scale.seconds, phase.min_seconds)
            print(f"[{phase.start - started:5.1f} s] {phase.title} ...", flush=True)
            try:
                if phase.attack is not None:
                    phase.outcome = phase.attack(self, until)
            except Exception:
                phase.harness_error = traceback.format_exc()
                print(f"    harness error:\n{phase.harness_error}", flush=True)
            time.sleep(max(0.0, until - time.monotonic()))
            if phase.outcome.summary:
                print(f"    {phase.outcome.summary}", flush=True)
            if not self.server.alive():
                try:
                    self.restart("by the end of the phase")
                except HarnessError as exc:
                    print(f"    {exc}", flush=True)
                    for later in self.phases[number + 1 :]:
                        later.harness_error = "not run: the server could not be restarted"
                        later.start = later.end = time.monotonic()
                    phase.end = time.monotonic()
                    return
        self.phases[-1].end = time.monotonic()

    def finish(self) -> tuple[list[tuple[float, float]], list[tuple[float, str, int]]]:
        """Stop the clients and the sampler, then stop the server gracefully and check it went."""
        successes, errors = self.clients.finish()
        self.sampler.stop()
        self.stop_result["master_alive_at_end"] = self.server.alive()
        code, took = self.server.stop(STOP_LIMIT)
        left = self.server.leftover_workers() if code is not None else []
        self.stop_result.update(exit_code=code, seconds=round(took, 2), workers_left=left)
        return successes, errors

    def log(self) -> list[tuple[float, str]]:
        """Every log line of every server this run started, with the time it was read."""
        return self.old_log + list(self.server.lines)

    def cleanup(self) -> None:
        self.server.kill()
        self.clients.kill()


# -- figures and targets -------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (nan if empty)."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(share * len(values) - 1e-9) - 1))]


def analyse(h: Harness, successes: list[tuple[float, float]], errors: list[tuple[float, str, int]]) -> dict[str, Any]:
    """Bucket the clients' round trips and the sampler's figures by phase; check every target."""
    rows: list[dict[str, Any]] = []
    log = h.log()
    for phase in h.phases:
        start = h.clients.started if phase.key == "baseline" else phase.start
        rtts = sorted(rtt for t, rtt in successes if start <= t < phase.end)
        errs = [e for e in errors if start <= e[0] < phase.end]
        lost: list[tuple[float, str, int]] = []
        if phase.key == "kill" and "killed_ports" in phase.outcome.figures:
            ports, killed_at = set(phase.outcome.figures["killed_ports"]), phase.outcome.figures["killed_at"]
            lost = [e for e in errs if e[2] in ports and e[1] in LOSS_KINDS and e[0] >= killed_at]
            errs = [e for e in errs if e not in lost]
        samples = [s for s in h.sampler.samples if phase.start <= s[0] < phase.end]
        peak_rss: dict[int, int] = {}
        peak_conns: dict[int, int] = {}
        for _, per_worker, _ in samples:
            for pid, (rss, fds) in per_worker.items():
                peak_rss[pid] = max(peak_rss.get(pid, 0), rss)
                peak_conns[pid] = max(peak_conns.get(pid, 0), fds - h.idle_fds)
        over = {
            pid: (rss, RSS_BASE + RSS_PER_CONNECTION * max(0, peak_conns[pid]))
            for pid, rss in peak_rss.items()
            if rss > RSS_BASE + RSS_PER_CONNECTION * max(0, peak_conns[pid])
        }
        pids_seen = {pid for _, per_worker, _ in samples for pid in per_worker}
        pids_after = set(samples[-1][1]) if samples else set()
        rows.append(
            {
                "phase": phase.key,
                "title": phase.title,
                "seconds": round(phase.end - phase.start, 2),
                "traffic": phase.traffic,
                "answers": len(rtts),
                "p50_ms": round(percentile(rtts, 0.5) * 1e3, 3),
                "p99_ms": round(percentile(rtts, 0.99) * 1e3, 3),
                "max_ms": round(rtts[-1] * 1e3, 3) if rtts else float("nan"),
                "errors": dict(Counter(e[1] for e in errs)),
                "error_count": len(errs),
                "lost_to_kill": len(lost),
                "rss_sum_peak_mb": round(max((sum(r for r, _ in pw.values()) for _, pw, _ in samples), default=0) / 2**20, 1),
                "rss_max_peak_mb": round(max(peak_rss.values(), default=0) / 2**20, 1),
                "master_rss_peak_mb": round(max((m for _, _, m in samples), default=0) / 2**20, 1),
                "connections_peak": max((sum(max(0, f - h.idle_fds) for _, f in pw.values()) for _, pw, _ in samples), default=0),
                "rss_over_limit": {pid: [round(r / 2**20, 1), round(limit / 2**20, 1)] for pid, (r, limit) in over.items()},
                "workers_gone": len(pids_seen - pids_after),
                "log_lines": sum(1 for t, _ in log if phase.start <= t < phase.end),
                "log_warnings": sum(
                    1 for t, line in log if phase.start <= t < phase.end and re.search(r"\[(WARNING|ERROR|CRITICAL)\]|Traceback", line)
                ),
                "attack": phase.outcome.summary,
                "attack_figures": phase.outcome.figures,
                "master_died": phase.master_died,
                "harness_error": phase.harness_error,
            }
        )
    baseline_p99 = rows[0]["p99_ms"] / 1e3
    p99_limit = h.scale.p99_factor * max(baseline_p99 if baseline_p99 == baseline_p99 else 0.0, P99_FLOOR)

    targets: list[dict[str, Any]] = []

    def target(name: str, problems: list[str], measured: str) -> None:
        targets.append({"target": name, "ok": not problems, "measured": measured, "problems": problems})

    attack_rows = [r for r, p in zip(rows, h.phases, strict=True) if p.traffic]
    target(
        "well-behaved clients see no errors (a SIGKILLed worker's connections excepted)",
        [f"{r['phase']}: {r['error_count']} {r['errors']}" for r in rows if r["error_count"]],
        f"{sum(r['error_count'] for r in rows)} errors, {sum(r['lost_to_kill'] for r in rows)} lost to the SIGKILL",
    )
    worst = max(attack_rows[1:], key=lambda r: r["p99_ms"] if r["p99_ms"] == r["p99_ms"] else -1.0, default=None)
    target(
        f"clients' p99 during every attack <= {h.scale.p99_factor:g}x baseline p99 "
        f"(floored at {P99_FLOOR * 1e3:.0f} ms) = {p99_limit * 1e3:.2f} ms",
        [
            f"{r['phase']}: " + (f"p99 {r['p99_ms']} ms" if r["answers"] else "no answers at all")
            for r in attack_rows[1:]
            if not r["p99_ms"] <= p99_limit * 1e3
        ],
        f"worst {worst['phase']} {worst['p99_ms']} ms" if worst else "no attack phase",
    )
    over_by_pid: dict[int, list[tuple[str, float, float]]] = {}
    for r in rows:
        for pid, (rss, limit) in r["rss_over_limit"].items():
            over_by_pid.setdefault(pid, []).append((r["phase"], rss, limit))
    target(
        "worker RSS <= 64 MiB + 8 KiB per open connection",
        [
            f"{over[0][0]}: worker {pid} peaked at {over[0][1]} MiB, limit {over[0][2]} MiB"
            + (f"; still above the limit in {', '.join(o[0] for o in over[1:])}" if over[1:] else "")
            for pid, over in over_by_pid.items()
        ],
        f"largest worker peak {max(r['rss_max_peak_mb'] for r in rows)} MiB",
    )
    for key, name in ATTACK_TARGETS.items():
        phase = next(p for p in h.phases if p.key == key)
        target(
            name,
            phase.outcome.broken + ([f"harness error in {key}"] if phase.harness_error else []),
            phase.outcome.summary[:110] + ("..." if len(phase.outcome.summary) > 110 else ""),
        )
    others = [f"{p.key}: {b}" for p in h.phases if p.key not in ATTACK_TARGETS for b in p.outcome.broken]
    others += [f"harness error in {p.key}" for p in h.phases if p.key not in ATTACK_TARGETS and p.harness_error]
    if others:
        target("other attack checks (the harness itself ran)", others, "")
    died = [p.key for p in h.phases if p.master_died]
    target(
        "the master stays alive through the whole run",
        [f"the master died during {k} (restarted for the remaining phases)" for k in died]
        + ([] if h.stop_result.get("master_alive_at_end") else ["the master was not alive at the end"]),
        "alive" if not died and h.stop_result.get("master_alive_at_end") else f"died during {died}",
    )
    stop = h.stop_result
    stop_problems = []
    if stop.get("exit_code") != 0:
        stop_problems.append(
            f"exit code {stop.get('exit_code')} after {stop.get('seconds')} s"
            if stop.get("exit_code") is not None
            else f"still running after {STOP_LIMIT:.0f} s"
        )
    if stop.get("workers_left"):
        stop_problems.append(f"workers still running after the master exited: {stop['workers_left']}")
    target(
        f"graceful stop (SIGTERM) exits 0 within {STOP_LIMIT:.0f} s",
        stop_problems,
        f"exit {stop.get('exit_code')} after {stop.get('seconds')} s",
    )
    return {
        "phases": rows,
        "baseline_p99_ms": round(baseline_p99 * 1e3, 3),
        "p99_limit_ms": round(p99_limit * 1e3, 3),
        "targets": targets,
        "stop": stop,
        "restarts": h.restarts,
    }


def print_report(report: dict[str, Any]) -> None:
    header = (
        f"{'phase':<34}{'p50 ms':>8}{'p99 ms':>8}{'answers':>9}{'errors':>8}{'lost':>6}"
        f"{'RSS sum':>9}{'RSS max':>9}{'conns~':>8}{'gone':>6}{'log w/e':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in report["phases"]:
        quiet = not r["traffic"] or not r["answers"]  # the clients were paused, or got nothing
        p50, p99, answers = ("-", "-", "-") if quiet else (f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", r["answers"])
        print(
            f"{r['title']:<34}{p50:>8}{p99:>8}{answers:>9}{r['error_count']:>8}{r['lost_to_kill']:>6}"
            f"{r['rss_sum_peak_mb']:>9.1f}{r['rss_max_peak_mb']:>9.1f}{r['connections_peak']:>8}{r['workers_gone']:>6}"
            f"{r['log_warnings']:>8}"
        )
    print(
        "RSS in MiB (peak of the workers' sum, and of the largest worker); conns~ = the workers' descriptors beyond an\n"
        "idle worker's (peak); gone = workers that exited; log w/e = server log lines at WARNING or above."
    )
    print(
        f"Baseline p99 {report['baseline_p99_ms']:.3f} ms; the p99 limit uses max(baseline p99, {P99_FLOOR * 1e3:.0f} ms) "
        f"because loopback p99s are tiny and noisy: {report['p99_limit_ms']:.2f} ms.\n"
    )
    print("What the attacks' own connections got:")
    for r in report["phases"]:
        if r["attack"]:
            print(f"  {r['title']}: {r['attack']}")
        if r["errors"]:
            print(f"  {r['title']}: well-behaved client errors {r['errors']}")
        if r["master_died"]:
            for death in r["master_died"]:
                print(f"  {r['title']}: THE MASTER DIED {death.splitlines()[0]}")
    print("\nTargets:")
    for t in report["targets"]:
        print(f"  [{'met' if t['ok'] else 'BROKEN':>6}] {t['target']}: {t['measured']}")
        for problem in t["problems"]:
            print(f"           - {problem}")
    broken = [t for t in report["targets"] if not t["ok"]]
    print(f"\n{len(broken)} of {len(report['targets'])} targets broken" + (": " + "; ".join(t["target"] for t in broken) if broken else ""))


def without_nan(value: Any) -> Any:
    """Return ``value`` with every NaN (a phase without answers) as None, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return value


def raise_fd_limit(scale: Scale) -> Scale:
    """Raise the soft open-files limit to the hard one; scale the flood down if even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    except (ValueError, OSError):
        pass
    needed = scale.flood + FD_SLACK
    if soft >= needed:
        return scale
    room = max(100, soft - FD_SLACK)
    print(
        f"hostile: the open-files limit is {soft}; a flood of {scale.flood} needs {needed} "
        f"(as root: ulimit -n {needed}); the flood is scaled down to {min(scale.flood, room)}",
        flush=True,
    )
    return Scale(**{**asdict(scale), "flood": min(scale.flood, room), "silent": min(scale.silent, room), "idle": min(scale.idle, room)})


def start_watchdog(limit: float, harness_ref: list[Harness]) -> None:
    """If the run has not ended after ``limit`` seconds, kill what it started and exit 3."""

    def expire() -> None:
        time.sleep(limit)
        print(f"hostile: watchdog: the run took more than {limit:.0f} s; killing the server and exiting", file=sys.stderr, flush=True)
        for harness in harness_ref:
            harness.cleanup()
        os._exit(3)

    threading.Thread(target=expire, daemon=True, name="hostile-watchdog").start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1.5 s phases and a 2,000-connection flood")
    parser.add_argument("--seconds", type=float, default=0.0, help="length of each phase (default 5, or 1.5 with --quick)")
    parser.add_argument("--flood", type=int, default=0, help="connections in the flood (default 10,000, or 2,000 with --quick)")
    parser.add_argument("--json", metavar="FILE", help="write the figures and targets to FILE")
    parser.add_argument(
        "--p99-factor",
        type=float,
        default=0.0,
        help=f"the clients' p99 under attack may be this many times the baseline's (default {P99_FACTOR:g}); the test suite, "
        "sharing a loaded machine, allows more",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanup in ``finally``
    scale = raise_fd_limit(Scale.from_args(args))
    started = time.monotonic()
    start_watchdog(len(PHASES) * (scale.seconds + 30) + 120, harness_ref := [])
    print(
        f"hostile: {len(PHASES)} phases of {scale.seconds:g} s against {APP} on {WORKERS} workers, {CLIENTS} well-behaved clients; "
        f"flood {scale.flood}, open-files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="prefork-tcp-hostile-") as workdir:
        try:
            harness = Harness(scale, workdir)
        except HarnessError as exc:
            print(f"hostile: {exc}", file=sys.stderr)
            return 2
        harness_ref.append(harness)
        try:
            harness.run(started)
            successes, errors = harness.finish()
            report = analyse(harness, successes, errors)
        finally:
            harness.cleanup()
    report.update(run_seconds=round(time.monotonic() - started, 1), scale=asdict(scale))
    print_report(report)
    print(f"run time {report['run_seconds']} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(without_nan(report), fh, indent=1, default=str)
    return 0 if all(t["ok"] for t in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
