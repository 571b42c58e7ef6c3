"""Peer: an asyncio Protocol (or uvloop with --uvloop), one handle() call per line
(how it runs: processes.py)."""

import asyncio

PONG, ERR = b"+PONG\r\n", b"-ERR unknown command\r\n"


class PingProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        *lines, self.buffer = (self.buffer + data).split(b"\r\n")
        for line in lines:
            self.handle(line)

    def handle(self, line):
        self.transport.write(PONG if line.upper() == b"PING" else ERR)


if __name__ == "__main__":
    from processes import run

    run(PingProtocol)
