"""The command line as a user meets it: help, check, usage and config errors, logs, daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from harness import TESTS, Client, servers_config, wait_for

ROOT = TESTS.parent


def run(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "RECORDER_LOG": str(cwd / "events.jsonl")}
    return subprocess.run(
        [sys.executable, "-m", "prefork_tcp", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_help_names_the_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "check" in result.stdout
    serve_help = run("serve", "--help").stdout
    for flag in ("--config", "--bind", "--workers", "--max-jobs", "--pidfile", "--log-level", "--preload", "--daemon"):
        assert flag in serve_help
    for key in ("tcp.pool.num_workers", "tcp.pool.max_jobs", "log.level"):  # help taken from the declarations
        assert f"(config: {key})" in " ".join(serve_help.split())
    assert "[1<=x<=256]" in serve_help and "[debug|info|warning|error|critical]" in serve_help


def test_check_prints_the_effective_config_and_it_loads_back(tmp_path):
    result = run("check", "-c", "conf/smtp.toml")
    assert result.returncode == 0, result.stderr
    assert '[tcp.servers.smtp]\naddr = "tcp://127.0.0.1:1025"' in result.stdout
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    again = run("check", "-c", str(printed))
    assert again.returncode == 0 and again.stdout == result.stdout


def test_check_reports_an_app_that_does_not_import():
    result = run("check", "nope_module:main")
    assert result.returncode == 4
    assert result.stderr.strip() == "prefork-tcp: cannot import application 'nope_module:main': no module named 'nope_module'"
    missing_attr = run("check", "recorder:nothing_here")
    assert missing_attr.returncode == 4 and "has no attribute 'nothing_here'" in missing_attr.stderr


def test_config_error_is_one_line_exit_2_and_nothing_starts(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('app = "recorder:main"\n[tcp.servers.s]\naddr = "127.0.0.1:0"\n[tcp.pool]\nnum_workers = -1\n')
    for command in ("serve", "check"):
        result = run(command, "-c", str(config))
        assert result.returncode == 2
        assert result.stderr == "prefork-tcp: tcp.pool.num_workers: expected a positive integer, got -1\n"
        assert result.stdout == ""


def test_usage_errors_exit_2(tmp_path):
    assert run("serve").returncode == 2  # no application anywhere
    assert "no application" in run("serve").stderr
    assert run("serve", "recorder:main", "-w", "0").returncode == 2
    bad_bind = run("serve", "recorder:main", "-b", "nowhere")
    assert bad_bind.returncode == 2 and bad_bind.stderr.startswith("prefork-tcp: tcp.servers.default.addr:")
    assert "Traceback" not in bad_bind.stderr


def test_json_logs_to_a_file(start_server, tmp_path):
    log_file = tmp_path / "server.log"
    config = servers_config("echo", extra=f'[log]\nformat = "json"\nfile = "{log_file}"\nlevel = "debug"\n')
    server = start_server(config, ready=False)
    wait_for(lambda: log_file.exists() and "serving:" in log_file.read_text(), what="the log file")
    assert server.stop() == 0
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"time", "level", "pid", "message"} <= set(entries[0])
    assert any(e["message"].startswith("listening at tcp://127.0.0.1:") for e in entries)


def test_daemon_detaches_and_stops_on_term(tmp_path):
    pidfile = tmp_path / "d.pid"
    log_file = tmp_path / "d.log"
    config = tmp_path / "d.toml"
    config.write_text(servers_config("echo", extra=f'[log]\nfile = "{log_file}"\n'))
    result = run("serve", "-c", str(config), "-w", "1", "--daemon", "--pidfile", str(pidfile), cwd=tmp_path)
    assert result.returncode == 0
    wait_for(lambda: pidfile.exists() and "serving:" in log_file.read_text(), what="the daemon")
    pid = int(pidfile.read_text())
    try:
        port = int(log_file.read_text().split("listening at tcp://127.0.0.1:")[1].split()[0])
        with Client(("127.0.0.1", port)) as client:
            client.send(b"daemon\r\n")
            assert client.line() == b"daemon\r\n"
        assert psutil.Process(pid).ppid() != os.getpid()  # detached
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not psutil.pid_exists(pid), what="the daemon to exit")
    assert not pidfile.exists()
