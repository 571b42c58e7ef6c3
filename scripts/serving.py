"""``prefork-tcp serve`` for the scripts: its config written to a work directory, its log
in a file there, and the port it bound once its workers serve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil


class ServerProcess:
    """A server started from ``config`` (TOML text) in ``workdir``; ``port`` once it serves.

    Its pidfile is ``pidfile``: after an upgrade it names the master in charge, which is
    not this process's child.
    """

    def __init__(self, workdir: str, config: str) -> None:
        self.pidfile = os.path.join(workdir, "master.pid")
        config = f'pidfile = "{self.pidfile}"\n{config}'
        self.log_path = os.path.join(workdir, "server.log")
        config_path = os.path.join(workdir, "server.toml")
        with open(config_path, "w") as fh:
            fh.write(config)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork_tcp", "serve", "-c", config_path],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = open(self.log_path).read()
            match = re.search(r"listening at tcp://127\.0\.0\.1:(\d+)", text)
            if match and "serving:" in text:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{text}")
            time.sleep(0.05)
        raise SystemExit("server did not start in 30s")

    def master_pid(self) -> int:
        """The master in charge (the one started here until an upgrade replaced it)."""
        try:
            with open(self.pidfile) as fh:
                return int(fh.read().strip() or self.proc.pid)
        except (OSError, ValueError):
            return self.proc.pid

    def stop(self) -> str:
        """Stop the master in charge gracefully (SIGKILL after 60 s); return the whole log."""
        master = self.master_pid()
        if master != self.proc.pid:
            try:
                process = psutil.Process(master)
                process.send_signal(signal.SIGTERM)
                process.wait(60)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                process.kill()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return open(self.log_path).read()
