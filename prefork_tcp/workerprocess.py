"""What a forked worker process does: set itself up, run the application, pick an exit code."""

from __future__ import annotations

import faulthandler
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import traceback
from dataclasses import dataclass

from setproctitle import setproctitle

from . import kv
from .api import TcpWorker
from .apploader import App, AppLoadError, load_app
from .channel import Kind, encode
from .config import Config
from .connection import HIGH_WATER
from .exits import EXIT_APP_LOAD, EXIT_BOOT_FAILED  # a worker that fails before it was ready: the CLI's codes
from .fdlimit import grow_table
from .scoreboard import SlotWriter
from .signals import SignalPipe
from .sockets import Listener
from .supervisor import Limits
from .watchdog import Watchdog
from .worker import Worker

log = logging.getLogger("prefork_tcp.worker")

#: Exit code of a worker whose application raised after it was ready.
EXIT_APP_FAILED = 1

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH)


@dataclass
class WorkerContext:
    """Everything a worker process gets from the master at fork."""

    worker_id: int
    config: Config
    app_spec: str
    listeners: list[Listener]
    channel: socket.socket
    preloaded: App | None
    slot: SlotWriter
    #: Events before this worker asks to retire (0: no limit).
    max_jobs: int
    #: Where faulthandler writes the Python stack when the master sends SIGUSR2.
    stack_fd: int


def run(ctx: WorkerContext) -> int:
    """Run one worker process to its end and return its exit code."""
    signals = SignalPipe(_STOP_SIGNALS, ignored=_IGNORED_SIGNALS)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    faulthandler.register(signal.SIGUSR2, file=ctx.stack_fd, all_threads=True, chain=False)
    setproctitle(f"{ctx.config.proc_name}: worker {ctx.worker_id} [{ctx.app_spec}]")
    try:
        _drop_privileges(ctx.config)
    except OSError as exc:
        return _fail(ctx, EXIT_BOOT_FAILED, f"cannot switch to user/group: {exc}")
    kv.configure(ctx.config.kv)  # before the application is imported: it may open one at import
    if ctx.preloaded is not None:
        app = ctx.preloaded
    else:
        try:
            app = load_app(ctx.app_spec)
        except AppLoadError as exc:
            return _fail(ctx, EXIT_APP_LOAD, str(exc))
    pool = ctx.config.pool
    loop = Worker(
        ctx.listeners,
        ctx.channel,
        signals,
        drain_timeout=pool.destroy_timeout / 2,
        high_water=HIGH_WATER,
        slot=ctx.slot,
        max_jobs=ctx.max_jobs,
        mark_events=Limits.from_pool(pool).needs_busy,
        max_connections=pool.max_connections,
    )
    worker = TcpWorker(loop)
    # The watchdog relies on the interpreter's lock (gate.py): not on a free-threaded build.
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    watchdog = Watchdog(loop, worker, pool.slow_event, run.__code__) if pool.slow_event and gil else None
    if watchdog is not None:
        grow_table()  # before a second thread exists (fdlimit.py)
        watchdog.start()
    try:
        app(worker)
    except Exception:
        if watchdog is not None:
            watchdog.stop()
        if not loop.ready:
            return _fail(ctx, EXIT_BOOT_FAILED, f"application failed before its first request:\n{traceback.format_exc().rstrip()}")
        log.exception(
            "application failed in worker %d; its other connections move to other workers and the worker is replaced", ctx.worker_id
        )
        try:
            loop.salvage(worker.current_connection())
        except Exception:
            log.exception("worker %d could not hand its connections over", ctx.worker_id)
        return EXIT_APP_FAILED
    if watchdog is not None:
        watchdog.stop()
    if not loop.ready:
        return _fail(ctx, EXIT_BOOT_FAILED, "application returned without waiting for a request")
    if not loop.stopped:
        log.warning("application of worker %d returned before the worker was told to stop", ctx.worker_id)
    return 0


def _fail(ctx: WorkerContext, code: int, cause: str) -> int:
    """Tell the master why this worker could not start; the master logs it once."""
    try:
        # At most 10,000 characters: 60 KB once encoded, whatever they are (a packet is 64 KiB).
        ctx.channel.send(encode(Kind.FAILED, {"code": code, "cause": cause[:10000]}))
    except OSError:
        log.error("%s", cause)
    return code


def _drop_privileges(config: Config) -> None:
    ids = worker_ids(config)
    if ids is None:
        return
    uid, gid = ids
    os.setgid(gid)
    if config.user:
        os.initgroups(pwd.getpwuid(uid).pw_name, gid)
        os.setuid(uid)


def worker_ids(config: Config) -> tuple[int, int] | None:
    """The user and group the workers run as (``user``, ``group``), or None when neither is set.
    Raises KeyError for a name the system does not know."""
    if not (config.user or config.group):
        return None
    uid = os.getuid()
    gid = os.getgid()
    if config.user:
        entry = pwd.getpwuid(int(config.user)) if config.user.isdigit() else pwd.getpwnam(config.user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if config.group:
        gid = int(config.group) if config.group.isdigit() else grp.getgrnam(config.group).gr_gid
    return uid, gid
