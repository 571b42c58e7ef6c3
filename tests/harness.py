"""Starting the real ``prefork-tcp`` as a subprocess and talking to it over loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).parent
DEADLINE = 30.0  # generous: the suite must pass on a loaded 2-core machine
_LISTENING = re.compile(r"listening at (\S+) \(server (\S+)\)")


def manage(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``prefork-tcp ARGS`` (a management command) and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "prefork_tcp", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        check=False,
    )


def prefork_tcp_program() -> str:
    """The ``prefork-tcp`` command installed with the Python running the tests (not the
    first on PATH, which may belong to another Python)."""
    beside = Path(sys.executable).parent / "prefork-tcp"
    if beside.exists():
        return str(beside)
    found = shutil.which("prefork-tcp")
    assert found, "prefork-tcp is not installed: pip install -e ."
    return found


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connects(port: int) -> bool:
    """Whether something accepts connections on loopback ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for(condition: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Server:
    """One ``prefork-tcp serve`` process with its log captured line by line."""

    def __init__(
        self,
        tmp_path: Path,
        config: str = "",
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        workers: int | None = 2,
        prefix: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.events_file = tmp_path / "events.jsonl"
        cmd = [*(prefix or []), sys.executable, "-m", "prefork_tcp", "serve"]
        if config:
            path = tmp_path / "server.toml"
            path.write_text(config)
            cmd += ["-c", str(path)]
        if workers is not None:
            cmd += ["-w", str(workers)]
        cmd += args or []
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "RECORDER_LOG": str(self.events_file),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or tmp_path
        )
        self.lines: list[str] = []
        #: The master in charge once an upgrade replaced the one started here (0: that one).
        self.master = 0
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    # -- observing -------------------------------------------------------------------

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, pattern: str, count: int = 1, timeout: float = DEADLINE) -> list[str]:
        regex = re.compile(pattern)

        def found() -> list[str] | None:
            hits = [line for line in list(self.lines) if regex.search(line)]
            return hits if len(hits) >= count else None

        try:
            return wait_for(found, timeout, f"log line /{pattern}/ x{count}")  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(f"no log line /{pattern}/ x{count}; log so far:\n{self.log}") from None

    def wait_ready(self, workers: int = 2) -> Server:
        self.wait_log(r"serving: \d+ workers ready")
        self.wait_log(r"worker \d+ \(pid \d+\) ready", count=workers)
        return self

    def addresses(self) -> dict[str, str]:
        """Map server name to the address it listens at, from the master's log."""
        self.wait_log("listening at")
        return {m.group(2): m.group(1) for m in map(_LISTENING.search, list(self.lines)) if m}

    def address(self, name: str = "default") -> tuple[str, int] | str:
        text = self.addresses()[name]
        if text.startswith("unix://"):
            return text[len("unix://") :]
        host, _, port = text[len("tcp://") :].rpartition(":")
        return host.strip("[]"), int(port)

    def master_pid(self) -> int:
        return self.master or self.proc.pid

    def worker_pids(self) -> list[int]:
        try:
            return sorted(child.pid for child in psutil.Process(self.master_pid()).children() if child.pid != self.upgrading())
        except psutil.NoSuchProcess:
            return []

    def upgrading(self) -> int:
        """The pid of a new master the master in charge started and is still handing over to (0: none)."""
        started = re.findall(r"\[(\d+)\] \[INFO\] upgrade: started new master (\d+)", self.log)
        mine = [int(new) for old, new in started if int(old) == self.master_pid()]
        return mine[-1] if mine and not gone(mine[-1]) else 0

    def upgrade(self, timeout: float = DEADLINE) -> int:
        """USR2 the master in charge; wait until the new one is in charge and the old one gone; return the new pid."""
        old = self.master_pid()
        done = len(re.findall(r"upgrade complete: master \d+ in charge", self.log))
        os.kill(old, signal.SIGUSR2)
        line = self.wait_log(r"upgrade complete: master \d+ in charge", count=done + 1, timeout=timeout)[-1]
        new = int(re.findall(r"upgrade complete: master (\d+) in charge", line)[0])
        wait_for(lambda: gone(old), timeout, f"old master {old} to exit")
        self.master = new
        return new

    def events(self) -> list[dict[str, Any]]:
        """Every event the recorder app saw, in the order written."""
        if not self.events_file.exists():
            return []
        with open(self.events_file, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.endswith("\n")]

    def events_of(self, uuid: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["uuid"] == uuid]

    def wait_events(self, uuid: str, last: str = "CLOSE", timeout: float = DEADLINE) -> list[dict[str, Any]]:
        """Wait until the connection's events end with ``last``; return them."""
        return wait_for(lambda: (ev := self.events_of(uuid)) and ev[-1]["event"] == last and ev, timeout, f"{last} of {uuid}")  # type: ignore[no-any-return]

    # -- controlling --------------------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        if self.master:
            os.kill(self.master, signum)
        else:
            self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = DEADLINE) -> int | None:
        """Stop the master in charge; return its exit code (None for a master an upgrade
        started: it is not this process's child)."""
        if self.master:
            if not gone(self.master):
                os.kill(self.master, signum)
            wait_for(lambda: gone(self.master), timeout, f"master {self.master} to exit")
            self._reader.join(5)
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        for master in {self.master_pid(), self.upgrading()} - {0}:
            if gone(master):
                continue
            for pid in _children(master):
                _kill(pid)
            _kill(master)
        if self.proc.poll() is None:
            for pid in _children(self.proc.pid):
                _kill(pid)
            self.proc.kill()
            self.proc.wait(10)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Client:
    """A blocking loopback client with line helpers and a deadline on every read."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = DEADLINE) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else (socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, marker: bytes = b"\r\n") -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"EOF before {marker!r}; got {self.buf!r}")
            self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def line(self) -> bytes:
        return self.read_until(b"\r\n")

    def read_exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"EOF after {len(self.buf)} of {size} bytes")
            self.buf += chunk
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def read_to_eof(self) -> bytes:
        """Everything until the server closes; raises if it resets instead."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                out, self.buf = self.buf, b""
                return out
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(start_server, config: str, workers: int = 1, **kwargs: Any) -> Server:
    """Start a server and wait until it serves; fail at once, with its log, if it exits instead."""
    server = start_server(config, workers=workers, ready=False, **kwargs)

    def ready() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited with code {server.proc.returncode}:\n{server.log}")
        lines = list(server.lines)
        return (
            any("serving:" in line for line in lines)
            and sum(bool(re.search(r"worker \d+ \(pid \d+\) ready", line)) for line in lines) >= workers
        )

    wait_for(ready, what="the server to serve")
    return server


def closed_by_server(client: Client) -> bytes:
    """Read until the server closes the connection (EOF or reset); return what arrived."""
    try:
        return client.read_to_eof()
    except ConnectionResetError:
        out, client.buf = client.buf, b""
        return out


def answering_pid(client: Client) -> int:
    """The pid of the worker that answers the recorder's ``pid`` command on this connection."""
    client.send(b"pid\r\n")
    return int(client.line())


def uuid_of(client: Client) -> str:
    """The connection's uuid, from the recorder's ``uuid`` command."""
    client.send(b"uuid\r\n")
    return client.line().decode().strip()


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def servers_config(*names: str, app: str = "recorder:main", extra: str = "", **server_extra: str) -> str:
    """A config with one loopback server on a free port per name."""
    parts = [f'app = "{app}"']
    for name in names:
        parts.append(f'[tcp.servers.{name}]\naddr = "tcp://127.0.0.1:0"')
        if name in server_extra:
            parts.append(server_extra[name])
    parts.append(extra)
    return "\n".join(parts) + "\n"
