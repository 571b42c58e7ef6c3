"""Peer: asyncio streams, readuntil() per line, write() and drain() per answer."""

import asyncio
import sys

PONG, ERR = b"+PONG\r\n", b"-ERR unknown command\r\n"


async def handle(reader, writer):
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(PONG if line[:-2].upper() == b"PING" else ERR)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
