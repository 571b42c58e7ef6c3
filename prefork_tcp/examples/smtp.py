"""A small SMTP receiver (RFC 5321 subset) that ``smtplib`` and ``swaks`` can deliver to.

Greets on CONNECTED; understands EHLO/HELO, MAIL FROM, RCPT TO, DATA (with
dot-unstuffing), RSET, NOOP, VRFY and QUIT; answers 5xx to anything else.  Each
received message is logged as one line; when ``PREFORK_TCP_SMTP_SPOOL`` names a
directory, the message is also saved there as ``<id>.eml``.

Each connection's SMTP state lives in ``worker.session``, which moves with the
connection: a transaction goes on unharmed when its connection is handed to another
worker (a recycle, a reload, another connection's slow event), and is dropped with the
connection after CLOSE.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass, field

from prefork_tcp import Request, TcpEvent, TcpResponse, TcpWorker

log = logging.getLogger("prefork_tcp.examples.smtp")

MAX_MESSAGE = 10 * 1024 * 1024
MAX_RECIPIENTS = 100
_PATH = re.compile(rb"^(FROM|TO):\s*<([^<>]*)>(.*)$", re.IGNORECASE)


@dataclass
class Session:
    """One SMTP conversation."""

    greeted: bool = False
    sender: bytes | None = None
    recipients: list[bytes] = field(default_factory=list)
    #: Lines of the message while DATA is being received, else None.
    lines: list[bytes] | None = None
    size: int = 0

    def reset(self) -> None:
        self.sender, self.recipients, self.lines, self.size = None, [], None, 0


class SmtpServer:
    """Turns each DATA line of a connection into the SMTP reply for it."""

    def __init__(self, hostname: str, spool: str | None) -> None:
        self.hostname = hostname.encode()
        self.spool = spool

    def handle(self, worker: TcpWorker, request: Request) -> None:
        if request.event is TcpEvent.CONNECTED:
            worker.session["smtp"] = Session()
            worker.respond(b"220 " + self.hostname + b" ESMTP prefork_tcp\r\n")
        elif request.event is TcpEvent.DATA:
            session: Session = worker.session["smtp"]
            if session.lines is not None:
                reply = self.data_line(session, request)
            else:
                reply = self.command(session, request.body.rstrip(b"\r\n"))
            if reply.startswith(b"221"):
                worker.respond(reply, TcpResponse.RESPOND_CLOSE)
            elif reply:
                worker.respond(reply)
            else:
                worker.read()

    def command(self, session: Session, line: bytes) -> bytes:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb == b"EHLO":
            session.greeted = True
            session.reset()
            return b"250-" + self.hostname + b"\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE " + str(MAX_MESSAGE).encode() + b"\r\n"
        if verb == b"HELO":
            session.greeted = True
            session.reset()
            return b"250 " + self.hostname + b"\r\n"
        if verb == b"MAIL":
            return self.mail(session, arg)
        if verb == b"RCPT":
            return self.rcpt(session, arg)
        if verb == b"DATA":
            if not session.recipients:
                return b"503 5.5.1 Need RCPT command first\r\n"
            session.lines = []
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            session.reset()
            return b"250 2.0.0 OK\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 OK\r\n"
        if verb == b"VRFY":
            return b"252 2.1.5 Cannot VRFY user, but will accept message\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"500 5.5.2 Command unrecognized\r\n"

    def mail(self, session: Session, arg: bytes) -> bytes:
        if not session.greeted:
            return b"503 5.5.1 Send EHLO or HELO first\r\n"
        if session.sender is not None:
            return b"503 5.5.1 Sender already given\r\n"
        match = _PATH.match(arg)
        if not match or match.group(1).upper() != b"FROM":
            return b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        session.sender = match.group(2)
        return b"250 2.1.0 OK\r\n"

    def rcpt(self, session: Session, arg: bytes) -> bytes:
        if session.sender is None:
            return b"503 5.5.1 Need MAIL command first\r\n"
        match = _PATH.match(arg)
        if not match or match.group(1).upper() != b"TO" or not match.group(2):
            return b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"
        if len(session.recipients) >= MAX_RECIPIENTS:
            return b"452 4.5.3 Too many recipients\r\n"
        session.recipients.append(match.group(2))
        return b"250 2.1.5 OK\r\n"

    def data_line(self, session: Session, request: Request) -> bytes:
        assert session.lines is not None
        line = request.body
        if line == b".\r\n":
            return self.deliver(session, request)
        if line.startswith(b"."):
            line = line[1:]  # dot-unstuffing (RFC 5321 4.5.2)
        session.size += len(line)
        if session.size <= MAX_MESSAGE:
            session.lines.append(line)
        return b""

    def deliver(self, session: Session, request: Request) -> bytes:
        assert session.lines is not None
        if session.size > MAX_MESSAGE:
            session.reset()
            return b"552 5.3.4 Message too big\r\n"
        message_id = uuid.uuid4().hex[:16]
        body = b"".join(session.lines)
        if self.spool:
            path = os.path.join(self.spool, f"{message_id}.eml")
            with open(path + ".tmp", "wb") as fh:
                fh.write(body)
            os.replace(path + ".tmp", path)
        log.info(
            "received message %s from <%s> to %s, %d bytes (server %s, remote %s)",
            message_id,
            session.sender.decode("utf-8", "replace") if session.sender is not None else "",
            ", ".join(f"<{r.decode('utf-8', 'replace')}>" for r in session.recipients),
            len(body),
            request.server,
            request.remote_address,
        )
        session.reset()
        return b"250 2.0.0 OK: queued as " + message_id.encode() + b"\r\n"


def main(worker: TcpWorker) -> None:
    server = SmtpServer(socket.gethostname(), os.environ.get("PREFORK_TCP_SMTP_SPOOL"))
    while (request := worker.wait_request()) is not None:
        try:
            server.handle(worker, request)
        except Exception:  # one broken session must not take the worker down
            log.exception("SMTP session %s failed", request.connection_uuid)
            if request.event is not TcpEvent.CLOSE:
                try:
                    worker.respond(b"451 4.3.0 Internal error\r\n", TcpResponse.RESPOND_CLOSE)
                except RuntimeError:
                    pass  # the handler had answered before it failed
