"""Peer: an asyncio Protocol (or uvloop with --uvloop), one handle() call per line, and
the answers to one read joined into one write, as prefork_tcp sends them."""

import asyncio
import sys

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


async def main(port):
    server = await asyncio.get_running_loop().create_server(PingProtocol, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
