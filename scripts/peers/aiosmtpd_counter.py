"""Peer: aiosmtpd (what a Python user picks for an SMTP receiver), accepting and counting
every message, nothing written to disk; --uvloop runs it on uvloop."""

import asyncio
import sys

from aiosmtpd.smtp import SMTP


class Counter:
    """The handler: accept every message and count it, as prefork_tcp's SMTP example does."""

    def __init__(self) -> None:
        self.messages = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages += 1
        return "250 2.0.0 Ok: queued"


async def main(port: int) -> None:
    handler = Counter()
    loop = asyncio.get_running_loop()
    # hostname given: aiosmtpd would otherwise resolve the machine's name for every session
    server = await loop.create_server(lambda: SMTP(handler, hostname="bench.local", ident="aiosmtpd"), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
