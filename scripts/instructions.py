#!/usr/bin/env python3
"""Where a server's CPU goes: instructions in its own process and system calls, per request.

``bench.py`` measures CPU time; this tells its two parts apart, for the same servers and
cases (``redis-benchmark -t ping_inline``, ``-P 1``, ``-P 16``, ``-k 0``):

- **instructions**: the server runs under valgrind's callgrind twice, serving N and then
  3N requests; the instructions all its processes executed in user space (the
  interpreter, libraries, the compiled core) differ by the cost of 2N requests, with
  start-up and shut-down cancelled out. Deterministic up to how requests batch.
- **system calls** (``--syscalls``; ``--syscalls-only`` without valgrind): the same two
  runs under ``strace -f -c``, the difference per request, ``futex`` left out (threads
  waiting, not work).

The kernel's own work is not in the instruction count: the system calls tell how often
it is entered. Under valgrind a server runs some 50 times slower, so requests queue up
more than at full speed (more messages per read, more connections per poll): the counts
compare servers under the same conditions, not those of a full-speed run. Every process
of the server is counted, prefork_tcp's master too.

    python3 scripts/instructions.py [--requests 20000] [--syscalls | --syscalls-only] [--only NAME ...]

Needs valgrind (not for --syscalls-only), redis-benchmark (redis-tools), strace for the
system calls, and the peers of bench.py. Everything it starts is stopped; only 127.0.0.1
is used.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from bench import CASES, SERVERS, available, free_port, implementation, stop, wait_listening

DEFAULT = ("prefork_tcp", "prefork_tcp (pure Python)", "uvloop Protocol, batched writes", "redis-server")
#: N per case, as a share of --requests: a new connection per request is slow under valgrind
SHARE = {"-P 1": 1.0, "-P 16": 2.0, "-k 0": 0.15}


def serve(program: list[str], wrapper: list[str], requests: int, flags: list[str]) -> None:
    """Start the server under ``wrapper``, drive ``requests`` requests through it, stop it."""
    port = free_port()
    argv = [*wrapper, *(part.replace("{port}", str(port)) for part in program)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, timeout=180)
        bench = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "ping_inline", "-q", "-n", str(requests), *flags]
        subprocess.run(bench, capture_output=True, timeout=1800, check=True)
        # The server itself ends, not strace (which would leave it running); every process
        # must end by itself, as valgrind writes its counts at exit.
        server = psutil.Process(proc.pid)
        if "strace" in wrapper:
            server = server.children()[0]
        for _ in range(60):  # under valgrind a signal can go unseen: send it again
            server.terminate()
            try:
                proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            stop(proc)


def unwrapped(command: list[str]) -> tuple[list[str], list[str]]:
    """Split ``env VAR=... program ...`` into the env part and the program."""
    if command[0] != "env":
        return [], command
    settings = [part for part in command[1:] if "=" in part]
    return ["env", *settings], command[1 + len(settings) :]


def instructions(command: list[str], requests: int, flags: list[str], workdir: Path) -> int:
    """Instructions all the server's processes executed in user space for one run."""
    for old in workdir.glob("*.out"):
        old.unlink()
    env, program = unwrapped(command)
    serve(program, [*env, "valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/%p.out"], requests, flags)
    total = 0
    for path in workdir.glob("*.out"):
        match = re.search(r"^summary: (\d+)", path.read_text(errors="replace"), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no summary in {path}: did the process end?")
        total += int(match.group(1))
    return total


def syscalls(command: list[str], requests: int, flags: list[str], workdir: Path) -> int:
    """System calls all the server's processes made for one run, ``futex`` left out."""
    out = workdir / "strace.txt"
    env, program = unwrapped(command)
    serve(program, [*env, "strace", "-f", "-c", "-o", str(out)], requests, flags)
    calls = 0
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] not in ("futex", "total", "syscall") and fields[3].isdigit():
            calls += int(fields[3])
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="N for -P 1 (scaled for the other cases)")
    parser.add_argument("--only", action="append", help="these servers of bench.py (repeatable)")
    parser.add_argument("--case", action="append", choices=list(CASES), help="these cases only (repeatable)")
    parser.add_argument("--syscalls", action="store_true", help="also count system calls per request with strace")
    parser.add_argument("--syscalls-only", action="store_true", help="count system calls only (no valgrind; quick)")
    args = parser.parse_args()
    counting = args.syscalls or args.syscalls_only
    needed = [*([] if args.syscalls_only else ["valgrind"]), "redis-benchmark", *(["strace"] if counting else [])]
    missing = [tool for tool in needed if not shutil.which(tool)]
    if missing:
        print(f"instructions: {', '.join(missing)} needed", file=sys.stderr)
        return 2
    names = args.only or [n for n in DEFAULT if n != "prefork_tcp (pure Python)" or implementation() == "compiled"]
    servers, notes = available({name: SERVERS[name] for name in names})
    cases = args.case or list(CASES)
    what = "system calls" if args.syscalls_only else "instructions" + (" · system calls" if args.syscalls else "")
    print(f"| server | {' | '.join(f'`{c}` {what}' for c in cases)} |")
    print(f"|---|{'---:|' * len(cases)}")
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        workdir = Path(tmp)
        for name, (command, _, _) in servers.items():
            cells = []
            for case in cases:
                flags = CASES[case][0]
                n = max(500, int(args.requests * SHARE[case]))
                parts = []
                if not args.syscalls_only:
                    few, many = (instructions(command, count, flags, workdir) for count in (n, 3 * n))
                    parts.append(f"{(many - few) / (2 * n):,.0f}")
                if counting:  # start-up's calls cancel out the same way
                    few, many = (syscalls(command, count, flags, workdir) for count in (n, 3 * n))
                    parts.append(f"{(many - few) / (2 * n):.2f}")
                cell = " · ".join(parts)
                cells.append(cell)
                print(f"  {name} {case}: {cell}", file=sys.stderr)
            print(f"| {name} | {' | '.join(cells)} |", flush=True)
    for note in notes:
        print(f"- {note}")
    print(f"\n(per request; Python {sys.version.split()[0]}; `python3 scripts/instructions.py {' '.join(sys.argv[1:])}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
