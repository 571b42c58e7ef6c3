"""The exit statuses of ``prefork-tcp serve`` (SPEC §4), and what each means."""

from __future__ import annotations

EXIT_CLEAN = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
#: Workers failed to boot (also a worker's own exit status when it cannot start).
EXIT_BOOT_FAILED = 3
#: The application could not be imported (also a worker's own exit status).
EXIT_APP_LOAD = 4

MEANINGS = {
    EXIT_RUNTIME: "runtime failure",
    EXIT_USAGE: "usage or config error",
    EXIT_BOOT_FAILED: "workers failed to boot",
    EXIT_APP_LOAD: "application could not be imported",
}
