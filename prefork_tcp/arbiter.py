"""The master process: bind, fork workers, watch them, replace the dead, stop on signals.

Signal handlers do nothing; the interpreter writes each signal's number into a pipe
and the main loop acts on it.  The master never accepts a connection and never runs
application code (unless ``--preload`` imported it before forking).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass

from setproctitle import setproctitle

from . import logs
from .apploader import App
from .config import Config
from .signals import SignalPipe
from .sockets import Listener, unlink_unix
from .worker import CMD_QUIT, CMD_STOP, MSG_READY
from .workerproc import EXIT_APP_LOAD, EXIT_BOOT_FAILED, MSG_FAILED, WorkerContext
from .workerproc import run as run_worker

log = logging.getLogger("prefork_tcp.master")

_HANDLED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
)
#: The longest the master sleeps without looking at its workers.
TICK = 1.0
#: Delay before retrying after the n-th consecutive failed boot: BACKOFF * 2**(n-1), capped.
BACKOFF = 0.5
BACKOFF_CAP = 30.0


@dataclass(eq=False)
class WorkerHandle:
    """The master's view of one worker process."""

    id: int
    pid: int
    channel: socket.socket
    started: float
    ready: bool = False
    stopping: bool = False
    failure: tuple[int, str] | None = None


class Arbiter:
    """Runs the master's main loop; ``run()`` returns the process exit code."""

    def __init__(self, config: Config, app_spec: str, listeners: list[Listener], preloaded: App | None) -> None:
        self.config = config
        self.app_spec = app_spec
        self.listeners = listeners
        self.preloaded = preloaded
        self.target = config.pool.num_workers
        self.workers: dict[int, WorkerHandle] = {}
        self.selector = selectors.DefaultSelector()
        self.next_id = 1
        self.ever_ready = False
        self.announced = False
        self.boot_failures = 0
        self.spawn_after = 0.0
        self.stopping = False
        self.quick = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.signals: SignalPipe | None = None

    # -- main loop ----------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return 0 for a clean stop, 3 or 4 for a failed boot."""
        setproctitle(f"{self.config.proc_name}: master [{self.app_spec}]")
        self._install_signals()
        for lst in self.listeners:
            log.info("listening at %s (server %s)", lst.bound, lst.name)
        log.info("master %d starting %d workers for %s", os.getpid(), self.target, self.app_spec)
        for key in _unenforced(self.config):
            log.warning("%s is set, but this version does not enforce it yet; ignored", key)
        try:
            while True:
                self._spawn_missing()
                self._wait()
                self._reap()
                self._check_timeouts()
                if self.stopping and not self.workers:
                    return self.exit_code
        finally:
            self._cleanup()

    def _wait(self) -> None:
        timeout = TICK
        if self.spawn_after:
            timeout = min(timeout, max(0.0, self.spawn_after - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._read_signals()
            else:
                self._read_channel(key.data)

    # -- signals --------------------------------------------------------------------

    def _install_signals(self) -> None:
        self.signals = SignalPipe(_HANDLED_SIGNALS)
        self.selector.register(self.signals.fileno(), selectors.EVENT_READ, None)

    def _read_signals(self) -> None:
        assert self.signals is not None
        for signum in self.signals.drain():
            self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            log.info("SIGTERM: stopping gracefully")
            self.stop(quick=False)
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            log.info("%s: stopping quickly", signal.Signals(signum).name)
            self.stop(quick=True)
        elif signum == signal.SIGUSR1:
            logs.reopen()
            log.info("SIGUSR1: log files reopened")
        elif signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2):
            log.warning("%s is not supported by this version; ignored", signal.Signals(signum).name)

    # -- workers ----------------------------------------------------------------------

    def _spawn_missing(self) -> None:
        if self.stopping or (self.spawn_after and time.monotonic() < self.spawn_after):
            return
        self.spawn_after = 0.0
        while sum(1 for w in self.workers.values() if not w.stopping) < self.target:
            self._spawn()

    def _spawn(self) -> None:
        worker_id = self.next_id
        self.next_id += 1
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            parent_end.close()
            self._become_worker(worker_id, child_end)
        child_end.close()
        parent_end.setblocking(False)
        handle = WorkerHandle(worker_id, pid, parent_end, time.monotonic())
        self.workers[pid] = handle
        self.selector.register(parent_end, selectors.EVENT_READ, handle)
        log.debug("started worker %d (pid %d)", worker_id, pid)

    def _become_worker(self, worker_id: int, channel: socket.socket) -> None:  # pragma: no cover
        code = 1
        try:
            self.selector.close()
            for other in self.workers.values():
                other.channel.close()
            if self.signals is not None:
                self.signals.close()
            code = run_worker(
                WorkerContext(worker_id, self.config, self.app_spec, self.listeners, channel, self.preloaded)
            )
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", worker_id)
        finally:
            logging.shutdown()
            os._exit(code)

    def _read_channel(self, handle: WorkerHandle) -> None:
        while True:
            try:
                message = handle.channel.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:
                self._close_channel(handle)
                return
            if message == MSG_READY:
                self._on_ready(handle)
            elif message.startswith(MSG_FAILED):
                handle.failure = (int(message[1:2]), message[2:].decode("utf-8", "replace"))

    def _close_channel(self, handle: WorkerHandle) -> None:
        if handle.channel.fileno() < 0:
            return
        try:
            self.selector.unregister(handle.channel)
        except KeyError:
            pass
        handle.channel.close()

    def _on_ready(self, handle: WorkerHandle) -> None:
        handle.ready = True
        self.boot_failures = 0
        log.info("worker %d (pid %d) ready", handle.id, handle.pid)
        if not self.ever_ready:
            self.ever_ready = True
        if not self.announced and sum(w.ready for w in self.workers.values()) >= self.target:
            self.announced = True
            log.info("serving: %d workers ready", self.target)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            handle = self.workers.pop(pid, None)
            if handle is not None:
                self._on_exit(handle, status)

    def _on_exit(self, handle: WorkerHandle, status: int) -> None:
        if handle.channel.fileno() >= 0:
            self._read_channel(handle)
            self._close_channel(handle)
        how = _describe(status)
        if handle.ready or handle.stopping:
            if self.stopping or handle.stopping:
                log.info("worker %d (pid %d) %s", handle.id, handle.pid, how)
            else:
                log.warning("worker %d (pid %d) %s; starting a replacement", handle.id, handle.pid, how)
            return
        code, cause = handle.failure or (EXIT_BOOT_FAILED, f"worker {handle.id} (pid {handle.pid}) {how} before it was ready")
        if not self.ever_ready:
            if not self.stopping:
                log.error("%s", cause)
                log.error("no worker could start; shutting down")
                self.exit_code = EXIT_APP_LOAD if code == EXIT_APP_LOAD else EXIT_BOOT_FAILED
                self.stop(quick=True)
                for other in self.workers.values():  # none has a connection yet
                    _kill(other.pid, signal.SIGKILL)
            return
        self.boot_failures += 1
        delay = min(BACKOFF * 2 ** (self.boot_failures - 1), BACKOFF_CAP)
        log.error("%s", cause)
        log.error("worker %d failed to start (%d in a row); retrying in %.1fs", handle.id, self.boot_failures, delay)
        self.spawn_after = time.monotonic() + delay

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if now >= self.stop_deadline:
                for handle in self.workers.values():
                    log.warning("worker %d (pid %d) did not stop in time; killing it", handle.id, handle.pid)
                    _kill(handle.pid, signal.SIGKILL)
                self.stop_deadline = now + TICK
            return
        limit = self.config.pool.allocate_timeout
        for handle in self.workers.values():
            if not handle.ready and not handle.stopping and now - handle.started > limit:
                cause = f"worker {handle.id} (pid {handle.pid}) was not ready after {limit:g}s (allocate_timeout); killed"
                handle.failure = (EXIT_BOOT_FAILED, cause)
                _kill(handle.pid, signal.SIGKILL)

    # -- stopping ------------------------------------------------------------------------

    def stop(self, quick: bool) -> None:
        """Stop every worker (gracefully unless ``quick``); the loop exits once all are gone."""
        if self.stopping and (self.quick or not quick):
            return
        if not self.stopping:
            self.stop_deadline = time.monotonic() + self.config.pool.destroy_timeout
            for lst in self.listeners:
                lst.sock.close()
        self.stopping = True
        self.quick = quick
        for handle in self.workers.values():
            handle.stopping = True
            try:
                handle.channel.send(CMD_QUIT if quick else CMD_STOP)
            except OSError:
                pass

    def _cleanup(self) -> None:
        for handle in self.workers.values():
            _kill(handle.pid, signal.SIGKILL)
        for lst in self.listeners:
            lst.sock.close()
            unlink_unix(lst.address)
        if self.signals is not None:
            self.signals.close()
        self.selector.close()


def _unenforced(config: Config) -> list[str]:
    """Return the keys that are set but have no effect in this version."""
    pool, sup = config.pool, config.pool.supervisor
    keys = {
        "tcp.pool.max_jobs": pool.max_jobs,
        "tcp.pool.supervisor.ttl": sup.ttl,
        "tcp.pool.supervisor.idle_ttl": sup.idle_ttl,
        "tcp.pool.supervisor.max_worker_memory": sup.max_worker_memory,
        "tcp.pool.supervisor.exec_ttl": sup.exec_ttl,
        "control.socket": config.control.socket,
    }
    return [key for key, value in keys.items() if value]


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
