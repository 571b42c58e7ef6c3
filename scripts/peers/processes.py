"""How a peer runs: ``PORT [--uvloop] [--processes N]``. With N > 1, N processes share
the port with SO_REUSEPORT (the kernel spreads the connections), what a user runs
instead of a pre-fork server; a TERM to the first stops them all."""

import asyncio
import os
import signal
import sys


def run(protocol) -> None:
    """Serve ``protocol`` as the command line says."""
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    port = int(sys.argv[1])
    processes = int(sys.argv[sys.argv.index("--processes") + 1]) if "--processes" in sys.argv else 1

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", port, reuse_port=processes > 1)
        await server.serve_forever()

    children = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(main())
            os._exit(0)
        children.append(pid)

    def stop_all(*_):
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
                os.waitpid(child, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop_all)
    try:
        asyncio.run(main())
    finally:  # the parent failed: no child serves on alone
        stop_all()
