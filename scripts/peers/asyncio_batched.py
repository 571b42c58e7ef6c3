"""Peer: an asyncio Protocol (or uvloop with --uvloop), one handle() call per line, and
the answers to one read joined into one write, as prefork_tcp sends them."""

import asyncio

PONG, ERR = b"+PONG\r\n", b"-ERR unknown command\r\n"


class PingProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        *lines, self.buffer = (self.buffer + data).split(b"\r\n")
        answers = [self.handle(line) for line in lines]
        if answers:
            self.transport.write(b"".join(answers))

    def handle(self, line):
        return PONG if line.upper() == b"PING" else ERR


if __name__ == "__main__":
    from processes import run

    run(PingProtocol)
