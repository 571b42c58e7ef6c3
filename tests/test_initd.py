"""The shipped LSB init script, run through its verbs with the real start-stop-daemon."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from harness import TESTS, gone, prefork_tcp_program, wait_for

SCRIPT = Path(__file__).parent.parent / "conf" / "init.d" / "prefork-tcp"

pytestmark = pytest.mark.skipif(not shutil.which("start-stop-daemon"), reason="start-stop-daemon not installed")


class InitScript:
    """The init script with its settings in a defaults file of the test's own."""

    def __init__(self, tmp_path: Path) -> None:
        self.address = str(tmp_path / "echo.sock")
        self.log = tmp_path / "server.log"
        self.pidfile = tmp_path / "master.pid"
        config = tmp_path / "server.toml"
        config.write_text(
            f'app = "recorder:main"\n[tcp.servers.echo]\naddr = "unix://{self.address}"\n[log]\nfile = "{self.log}"\n'
            "[tcp.pool]\nnum_workers = 2\n"
        )
        program = prefork_tcp_program()
        self.defaults = tmp_path / "defaults"
        self.defaults.write_text(f'CONFIG="{config}"\nPIDFILE="{self.pidfile}"\nDAEMON="{program}"\nSTOP_TIMEOUT=30\n')
        self.env = {
            **os.environ,
            "PREFORK_TCP_DEFAULTS": str(self.defaults),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "RECORDER_LOG": str(tmp_path / "events.jsonl"),
        }

    def __call__(self, verb: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(SCRIPT), verb], capture_output=True, text=True, timeout=120, env=self.env, check=False)

    def echo(self, text: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(self.address)
            sock.sendall(text)
            return sock.recv(100)

    def pid(self) -> int:
        return int(self.pidfile.read_text())


@pytest.fixture
def script(tmp_path):
    init = InitScript(tmp_path)
    yield init
    if init.pidfile.exists():  # a failed test must not leave a server behind
        init("stop")


def test_start_status_reload_stop_with_lsb_exit_codes(script):
    assert script("status").returncode == 3  # not running
    assert script("reload").returncode == 7
    started = script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = script.pid()
    wait_for(lambda: "serving:" in script.log.read_text(), what="the workers")
    assert script.echo(b"hi\r\n") == b"hi\r\n"
    assert script("start").returncode == 0 and script.pid() == pid  # already running: nothing to do
    status = script("status")
    assert status.returncode == 0 and f"running (pid {pid})" in status.stdout
    assert script("reload").returncode == 0
    wait_for(lambda: "reload complete" in script.log.read_text(), what="the reload")
    assert script.echo(b"after\r\n") == b"after\r\n"
    assert script("stop").returncode == 0
    assert not script.pidfile.exists()
    wait_for(lambda: gone(pid), what="the master gone")
    assert script("status").returncode == 3
    assert script("stop").returncode == 0  # stopping what is stopped succeeds


def test_restart_replaces_the_master(script):
    assert script("start").returncode == 0
    pid = script.pid()
    # Its workers' "serving:" first: a restart before it would leave one such line, not two.
    wait_for(lambda: "serving:" in script.log.read_text(), what="the first workers")
    assert script("restart").returncode == 0
    assert script.pid() != pid and gone(pid)
    wait_for(lambda: script.log.read_text().count("serving:") >= 2, what="the new workers")
    assert script.echo(b"x\r\n") == b"x\r\n"


def test_upgrade_hands_every_connection_to_a_new_master_or_fails_leaving_the_old_one(script):
    assert script("upgrade").returncode == 7  # not running
    assert script("start").returncode == 0
    old = script.pid()
    wait_for(lambda: "serving:" in script.log.read_text(), what="the workers")
    with socket.socket(socket.AF_UNIX) as held:
        held.settimeout(30)
        held.connect(script.address)
        held.sendall(b"uuid\r\n")
        uuid = held.recv(100)
        result = script("upgrade")
        assert result.returncode == 0, result.stdout + result.stderr
        new = script.pid()
        assert result.stdout.strip() == f"prefork-tcp: upgraded (pid {old} -> {new})"
        wait_for(lambda: gone(old), what="the old master to exit")
        held.sendall(b"uuid\r\n")
        assert held.recv(100) == uuid  # the same connection, now served by the new master's workers
        assert script("status").stdout.strip() == f"prefork-tcp: running (pid {new})"
        config = Path(script.defaults.read_text().split('"')[1])
        config.write_text(config.read_text().replace("num_workers = 2", "num_workers = -1"))
        failed = script("upgrade")
        assert failed.returncode == 1 and "upgrade failed: the new master" in failed.stdout, failed.stdout + failed.stderr
        assert f"master {new} keeps serving" in failed.stdout and script.pid() == new
        held.sendall(b"still\r\n")
        assert held.recv(100) == b"still\r\n"
    assert script("stop").returncode == 0
    wait_for(lambda: gone(new), what="the new master to stop")


def test_a_broken_config_fails_start_as_not_configured(script):
    config = Path(script.defaults.read_text().split('"')[1])
    config.write_text(config.read_text().replace("num_workers = 2", "num_workers = -1"))
    result = script("start")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "num_workers" in result.stderr
    assert not script.pidfile.exists()


def test_an_application_that_cannot_start_fails_start(script):
    script.defaults.write_text(script.defaults.read_text() + 'APP="no_such_module:main"\n')
    result = script("start")  # waits for the workers, which cannot import it
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed to start (exit 4)" in result.stdout
    assert script("status").returncode == 3


def test_unknown_verbs_are_usage_errors(script):
    result = script("dance")
    assert result.returncode == 2 and "usage:" in result.stderr
