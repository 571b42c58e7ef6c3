"""The shipped examples against real clients: smtplib, swaks, redis-benchmark."""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest
from harness import Client, closed_by_server, manage, wait_for

SMTP = "prefork_tcp.examples.smtp:main"
ROOT = Path(__file__).parent.parent


def smtp_server(start_server, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    server = start_server(args=[SMTP, "-b", "smtp=127.0.0.1:0"], env={"PREFORK_TCP_SMTP_SPOOL": str(spool)})
    return server, spool


def test_smtplib_delivers_mail_with_dot_unstuffing(start_server, tmp_path):
    server, spool = smtp_server(start_server, tmp_path)
    host, port = server.address("smtp")
    body = "Subject: hello\r\n\r\n.a line starting with a dot\r\n..two dots\r\nend\r\n"
    with smtplib.SMTP(host, port, timeout=30) as client:
        code, features = client.ehlo("tester")
        assert code == 250 and b"PIPELINING" in features
        refused = client.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"], body)
        assert refused == {}
        assert client.noop()[0] == 250
        assert client.rset()[0] == 250
    line = server.wait_log("received message")[0]
    assert "from <alice@example.org> to <bob@example.org>, <carol@example.org>" in line
    (saved,) = spool.iterdir()
    assert saved.read_bytes() == body.encode()
    wait_for(lambda: not list(spool.glob("*.tmp")), what="no temporary files")


def test_an_smtp_transaction_survives_its_connection_moving(start_server, tmp_path):
    """The session moves with the connection: a reset between RCPT and DATA loses nothing."""
    spool = tmp_path / "spool"
    spool.mkdir()
    pidfile = tmp_path / "smtp.pid"
    server = start_server(args=[SMTP, "-b", "smtp=127.0.0.1:0", "--pidfile", str(pidfile)], env={"PREFORK_TCP_SMTP_SPOOL": str(spool)})
    host, port = server.address("smtp")
    body = "Subject: moved\r\n\r\nsent across a worker recycle\r\n"
    with smtplib.SMTP(host, port, timeout=30) as client:
        assert client.ehlo("tester")[0] == 250
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        assert manage("reset", "--pidfile", str(pidfile)).returncode == 0
        server.wait_log(r"retired \(reset\)", count=2)
        code, reply = client.data(body)
        assert code == 250, reply
    line = server.wait_log("received message")[0]
    assert "from <alice@example.org> to <bob@example.org>" in line
    (saved,) = spool.iterdir()
    assert saved.read_bytes() == body.encode()


def test_smtp_sequence_errors_and_unknown_commands(start_server, tmp_path):
    server, _ = smtp_server(start_server, tmp_path)
    with Client(server.address("smtp")) as client:
        assert client.line().startswith(b"220 ")
        for command, code in [
            (b"MAIL FROM:<a@b>", b"503"),
            (b"HELO me", b"250"),
            (b"RCPT TO:<x@y>", b"503"),
            (b"DATA", b"503"),
            (b"MAIL FROM:<a@b>", b"250"),
            (b"MAIL FROM:<a@b>", b"503"),
            (b"RCPT TO:broken", b"501"),
            (b"FROB", b"500"),
            (b"VRFY x", b"252"),
            (b"QUIT", b"221"),
        ]:
            client.send(command + b"\r\n")
            assert client.line().startswith(code + b" "), command
        assert client.read_to_eof() == b""


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks is installed by .ci/run")
def test_swaks_delivers_mail(start_server, tmp_path):
    server, spool = smtp_server(start_server, tmp_path)
    host, port = server.address("smtp")
    result = subprocess.run(
        ["swaks", "--server", f"{host}:{port}", "--to", "you@example.org", "--from", "me@example.org", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK: queued as" in result.stdout
    server.wait_log("received message .* from <me@example.org> to <you@example.org>")
    assert len(list(spool.iterdir())) == 1


@pytest.mark.skipif(not shutil.which("redis-benchmark"), reason="redis-tools is installed by .ci/run")
@pytest.mark.parametrize("extra", [["-P", "16"], ["-k", "0"]])
def test_redis_benchmark_against_the_ping_example(start_server, extra):
    server = start_server(args=["prefork_tcp.examples.ping:main", "-b", "127.0.0.1:0"])
    host, port = server.address()
    requests = 2000 if "-k" in extra else 50000
    result = subprocess.run(
        ["redis-benchmark", "-h", host, "-p", str(port), "-t", "ping_inline", "-n", str(requests), "-c", "20", "--csv", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith('"PING_INLINE"')]
    assert rows, result.stdout + result.stderr
    assert float(re.findall(r'"([\d.]+)"', rows[0])[0]) > 0
    assert "Error" not in result.stdout + result.stderr


def test_echo_example(start_server):
    server = start_server(args=["prefork_tcp.examples.echo:main", "-b", "127.0.0.1:0"], workers=1)
    with Client(server.address()) as client:
        client.send(b"one\r\ntwo\r\n")
        assert client.read_exactly(10) == b"one\r\ntwo\r\n"


def test_whoami_example_answers_with_the_clients_own_address(start_server):
    server = start_server(args=["prefork_tcp.examples.whoami:main", "-b", "127.0.0.1:0"], workers=1)
    with Client(server.address()) as client:
        host, port = client.sock.getsockname()
        client.send(b"who\r\n")
        assert client.line() == f"{host}:{port}\r\n".encode()
        client.send(b"quit\r\n")
        assert closed_by_server(client) == b"bye\r\n"


def test_roadrunner_readme_loop_against_the_seed_config(start_server):
    server = start_server(
        args=[
            "prefork_tcp.examples.roadrunner:main",
            "-c",
            str(ROOT / "conf" / "smtp.toml"),
            "-b",
            "smtp=127.0.0.1:0",
            "-b",
            "server2=127.0.0.1:0",
        ]
    )
    assert set(server.addresses()) == {"smtp", "server2"}
    with Client(server.address("server2")) as client:
        assert client.line() == b"220 mailamie\r\n"
        client.send(b"hello\r\n")
        answer = json.loads(client.line())
        local = client.sock.getsockname()
    assert answer["server"] == "server2" and answer["event"] == "DATA" and answer["body"] == "hello\r\n"
    assert answer["remote_addr"] == f"{local[0]}:{local[1]}" and len(answer["uuid"]) == 36
    with Client(server.address("smtp")) as client:
        assert client.line() == b"220 mailamie\r\n"
        client.send(b"EHLO x\r\n")  # read and left unanswered on this server
        client.sock.shutdown(socket.SHUT_WR)
        assert client.read_to_eof() == b""
