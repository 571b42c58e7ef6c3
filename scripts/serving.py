"""``prefork-tcp serve`` for the scripts: its config written to a work directory, its log
in a file there, and the port it bound once its workers serve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


class ServerProcess:
    """A server started from ``config`` (TOML text) in ``workdir``; ``port`` once it serves."""

    def __init__(self, workdir: str, config: str) -> None:
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

    def stop(self) -> str:
        """Stop it gracefully (SIGKILL after 60 s); return its whole log."""
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return open(self.log_path).read()
