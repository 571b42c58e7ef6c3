"""The master process's main loop: signals, the workers' messages, management commands.

Signal handlers do nothing; the interpreter writes each signal's number into a pipe
and the main loop acts on it.  The master never accepts a connection and never runs
application code (unless ``--preload`` imported it before forking).  It learns each
worker's state from the shared scoreboard (``workerpool.WorkerPool``), and relays
connections from retiring workers to live ones.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable

from . import kv, logs
from .apploader import App
from .channel import ChannelError, Kind, Message, close_all
from .config import MAX_WORKERS, Config, ConfigError
from .exits import EXIT_APP_LOAD, EXIT_BOOT_FAILED
from .plane import Plane, PlaneClient
from .signals import SignalPipe
from .sockets import Listener, unlink_unix
from .upgrade import Peer, Predecessor
from .upgrading import Upgrading
from .workerhandle import WorkerHandle, worker_row
from .workerpool import TICK

log = logging.getLogger("prefork_tcp.master")

_HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGWINCH,
)
#: How often the master retries parcels no worker could take yet.
RELAY_RETRY = 0.02
#: How long a close by uuid waits for the workers' answers.
CLOSE_TIMEOUT = 5.0
#: A worker that reported a slow event gets no handed-over connection for this long.
SLOW_MEMORY = 2.0
#: After a step of the main loop raised, the loop waits at least this long before the next round.
FAULT_PAUSE = 0.1

Reloader = Callable[[], "tuple[Config, str]"]


class Arbiter(Upgrading):
    """Runs the master's main loop; ``run()`` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        app_spec: str,
        listeners: list[Listener],
        preloaded: App | None,
        reloader: Reloader | None = None,
        predecessor: Predecessor | None = None,
    ) -> None:
        super().__init__(config, app_spec, listeners, preloaded, predecessor)
        self.reloader = reloader
        #: Connections closed by uuid while their parcel waited in the relay.
        self.close_on_adoption: set[str] = set()
        #: A step of the main loop raised in this round (the next wait is at least FAULT_PAUSE).
        self.faulted = False
        self._fault_logged: dict[str, float] = {}

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped or upgraded; return 0 for a clean stop or a finished upgrade,
        3 or 4 for a failed boot."""
        self._set_title()
        self.signals = SignalPipe(_HANDLED_SIGNALS)
        self.selector.register(self.signals.fileno(), selectors.EVENT_READ, None)
        # A new master takes the control socket once it is in charge (upgrading.py).
        if self.predecessor is None and not (self._open_control() and self._open_metrics()):
            self._cleanup()
            return 1
        for lst in self.listeners:
            log.info("listening at %s (server %s%s)", lst.bound, lst.name, ", from systemd" if lst.inherited else "")
        log.info("master %d starting %d workers for %s", os.getpid(), self.target, self.app_spec)
        steps = (
            self._spawn_missing,
            self._wait,
            self._reap,
            self._check_timeouts,
            self._supervise,
            self._send_retirements,
            self._relay,
            self._tend_upgrade,
            self._sync_channels,
        )
        try:
            while True:
                for step in steps:
                    self._guarded(step)
                if self.upgraded():
                    return 0
                if self.stopping and not self.workers and not self.waiting_for_successor():
                    return self.exit_code
        finally:
            self._cleanup()

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step of the main loop; an unexpected exception is logged (with its
        traceback, at most once a second per step) and the loop carries on."""
        try:
            step()
        except Exception:
            self.faulted = True
            now = time.monotonic()
            name = step.__name__
            if now - self._fault_logged.get(name, -1.0) >= 1.0:
                self._fault_logged[name] = now
                log.exception("master: %s failed; carrying on", name)

    def _wait(self) -> None:
        now = time.monotonic()
        timeout = min(TICK, max(0.0, self.next_check - now))
        if self.spawn_after:
            timeout = min(timeout, max(0.0, self.spawn_after - now))
        if self.relay.waiting:
            timeout = min(timeout, RELAY_RETRY)
        for plane in self._planes():
            if plane.deadline:
                timeout = min(timeout, max(0.0, plane.deadline - now))
        if self.systemd.watchdog_interval and not self.stopping:  # WATCHDOG=1 while the loop runs
            timeout = min(timeout, max(0.0, self.systemd.tick(now) - now))
        if self.faulted:  # a step raised since the last wait: do not spin on it
            timeout = max(timeout, FAULT_PAUSE)
            self.faulted = False
        for key, events in self.selector.select(timeout):
            data = key.data
            if data is None:
                assert self.signals is not None
                for signum in self.signals.drain():
                    self._on_signal(signum)
            elif isinstance(data, (WorkerHandle, Peer)):
                if events & selectors.EVENT_WRITE:
                    data.channel.flush()
                if events & selectors.EVENT_READ:
                    self._read_channel(data) if isinstance(data, WorkerHandle) else self._read_peer(data)
            elif isinstance(data, PlaneClient):
                data.plane.serve(data, events)
            elif isinstance(data, Plane):
                data.accept()
        for plane in self._planes():
            plane.tend()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            log.info("%s received", name)
            self.stop(quick=signum != signal.SIGTERM)
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGTTIN:
            self.add_worker()
        elif signum == signal.SIGTTOU:
            self.remove_worker()
        elif signum == signal.SIGUSR1:
            logs.reopen()
            for handle in self.workers.values():
                handle.tell(Kind.REOPEN_LOGS)
            log.info("SIGUSR1: log files reopened (the workers reopen theirs)")
        elif signum == signal.SIGUSR2:
            self.upgrade()

    # -- the workers' messages -----------------------------------------------------------

    def _read_channel(self, handle: WorkerHandle) -> None:
        """Act on every message waiting on a worker's channel; a worker that sends
        something that is not a message of the table is killed."""
        if not handle.watching:
            return
        try:
            for message in handle.messages():
                self._on_message(handle, message)
        except ChannelError as exc:
            self._kill_garbage(handle, str(exc))
        if handle.ended:
            self._unwatch(handle)

    def _on_message(self, handle: WorkerHandle, message: Message) -> None:
        kind = message.kind
        if kind is Kind.PARCEL:
            self._take_parcel(handle, message)
        elif kind is Kind.PARCEL_ACK:
            adopted = self.relay.acknowledged(handle.pid, message["uuid"], message["ok"]) and message["ok"]
            if adopted and message["uuid"] in self.close_on_adoption:  # closed by uuid while it was here
                self.close_on_adoption.discard(message["uuid"])
                handle.tell(Kind.CLOSE, id=0, uuid=message["uuid"])
        elif kind is Kind.READY:
            self._on_ready(handle)
        elif kind is Kind.BUDGET_LOW:
            handle.budget_low = True  # _spawn_missing starts its successor now
        elif kind is Kind.BUDGET_SPENT:
            self._retiring_itself(handle, f"handled its max_jobs ({handle.max_jobs} events)", "max_jobs")
        elif kind is Kind.SLOW:
            handle.slow_until = time.monotonic() + SLOW_MEMORY
        elif kind is Kind.APP_FAILED:
            handle.crashed = True
            self._retiring_itself(handle, "its application failed", "app_error")
        elif kind is Kind.CLOSED:
            self.closes.answer(message["id"], handle.pid, message["found"])
        elif kind is Kind.CLOSE_REQUEST:
            if handle.asking:  # close_connection() waits for its answer: a second one is not asked
                handle.tell(Kind.CLOSE_RESULT, id=message["id"], found=False)
                return
            handle.asking = True
            self.close_connection(message["uuid"], _tell_result(handle, message["id"]), exclude=handle.pid)
        elif kind is Kind.FAILED:
            code = message["code"] if message["code"] in (EXIT_BOOT_FAILED, EXIT_APP_LOAD) else EXIT_BOOT_FAILED
            handle.failure = (code, message["cause"])

    def _retiring_itself(self, handle: WorkerHandle, reason: str, cause: str) -> None:
        """A worker hands its connections over without being asked: take it off the list
        of workers that adopt connections (its parcels follow this message)."""
        if not (handle.retiring or handle.stopping):
            handle.retiring = reason
            handle.cause = cause
            handle.retire_requested = time.monotonic()
            log.info("worker %d (pid %d) hands its connections over: %s", handle.id, handle.pid, reason)
        handle.retire_sent = handle.retire_sent or time.monotonic()

    def _take_parcel(self, handle: WorkerHandle, message: Message) -> None:
        """A worker hands a connection over: keep it until another worker adopts it."""
        uuid = message["uuid"]
        problem = self._parcel_problem(message)
        if problem:
            close_all(message.fds)
            self._kill_garbage(handle, f"parcel {uuid}: {problem}")
            return
        self.relay.add(message.fields, message.fds)
        handle.tell(Kind.PARCEL_ACK, uuid=uuid, ok=True)
        if self.closes.settle_for(uuid):  # asked to close it while it left its worker
            self.close_on_adoption.add(uuid)

    def _kill_garbage(self, handle: WorkerHandle, why: str) -> None:
        log.error("worker %d (pid %d) sent garbage on its channel (%s); killing it", handle.id, handle.pid, why)
        self._unwatch(handle)
        if not handle.killed:
            handle.killed = "sent garbage on its channel"
            handle.cause = "error"
            handle.signal(signal.SIGKILL)

    def _on_exit(self, handle: WorkerHandle, status: int) -> None:
        self._read_channel(handle)  # what it said last (a parcel, why it failed) comes first
        super()._on_exit(handle, status)

    # -- commands ------------------------------------------------------------------------

    def worker_rows(self) -> list[dict[str, object]]:
        """The ``workers`` table: one row per worker process, oldest first."""
        now = time.monotonic()
        busy_known = self.limits.needs_busy
        return [worker_row(w, self.board.row(w.slot), now, busy_known) for w in sorted(self.workers.values(), key=lambda w: w.id)]

    def close_connection(self, uuid: str, done: Callable[[bool], None], exclude: int = 0) -> None:
        """Ask every worker to close connection ``uuid``; ``done(found)`` once they answered."""
        if self.relay.holds(uuid) and not (self.successor and self.successor.taking):
            # On its way between workers: closed as soon as one adopts it (not one on its way
            # to a new master: this master reaches only what it still holds).
            self.close_on_adoption.add(uuid)
            done(True)
            return
        pids = {w.pid for w in self.workers.values() if w.ready and not w.killed and w.pid != exclude}
        request_id = self.closes.start(uuid, pids, time.monotonic() + CLOSE_TIMEOUT, done)
        if request_id is not None:
            for pid in pids:
                self.workers[pid].tell(Kind.CLOSE, id=request_id, uuid=uuid)

    def replace_all(self, reason: str) -> None:
        """Retire every worker, keeping their connections (``reset``)."""
        for handle in list(self.workers.values()):
            self.retire(handle, reason, reason)

    def add_worker(self) -> None:
        """SIGTTIN: one worker more, up to MAX_WORKERS."""
        if self.target >= MAX_WORKERS:
            log.warning("SIGTTIN: already %d workers, the most one master runs; ignored", self.target)
            return
        self.target += 1
        log.info("SIGTTIN: %d workers", self.target)

    def remove_worker(self) -> None:
        """SIGTTOU: one worker less, never below one; its connections move to the others."""
        if self.target <= 1:
            log.info("SIGTTOU: keeping the last worker")
            return
        self.target -= 1
        log.info("SIGTTOU: %d workers", self.target)
        staying = [w for w in self.workers.values() if not (w.retiring or w.stopping or w.killed)]
        if len(staying) > self.target:
            self.retire(min(staying, key=lambda w: w.id), "SIGTTOU", "scale_down")

    def reload(self) -> None:
        """SIGHUP or ``reload``: re-read the config and replace every worker with overlap."""
        if self.stopping or self.reloader is None:
            return
        self.systemd.reloading()  # READY=1 follows when the reload is over: done, refused or not
        busy = self.upgrade_busy()
        if busy:
            log.warning("not reloading: %s", busy)
            self.systemd.ready(f"not reloaded: {busy}")
            return
        try:
            config, app_spec = self.reloader()
            try:
                kv.check(config.kv, unless_in=self.config.kv)
            except kv.StorageError as exc:
                raise ConfigError(str(exc)) from None
            listeners = self._rebind(config)
            if config.log != self.config.log:
                try:
                    logs.setup(config.log)
                except OSError as exc:
                    raise ConfigError(f"log.file: cannot open {config.log.file!r}: {exc.strerror}") from None
            self.move_metrics(config.metrics.addr)
        except ConfigError as exc:
            log.error("config not reloaded: %s; the current workers keep serving", exc)
            self.systemd.ready(f"config not reloaded: {exc}")
            return
        except Exception:  # a bug in loading must not end the master either
            log.exception("config not reloaded; the current workers keep serving")
            self.systemd.ready("config not reloaded (see the log)")
            return
        log.info("reloading %s", config.source or "the configuration")
        self.reload_backup = (self.config, self.app_spec, self.target)
        self._apply(config, app_spec, listeners, config.pool.num_workers)
        self.generation += 1
        self.replace_all("reload")

    def _cleanup(self) -> None:
        for handle in self.workers.values():
            handle.signal(signal.SIGKILL)
        self.relay.close()
        self._close_peers()
        # After an upgrade the files are the new master's; a new master that failed leaves them to the old.
        if self.control is not None:
            self.control.close_all(unlink=self.owns_paths)
        if self.metrics is not None:
            self.metrics.close_all()
        for lst in self.listeners:
            lst.sock.close()
            if not lst.inherited and self.owns_paths:
                unlink_unix(lst.address)
        if self.signals is not None:
            self.signals.close()
        self.systemd.close()
        # The interpreter's exit would restore the default handlers: a second stop signal
        # during it would end the master "killed by SIGTERM" after a clean stop.
        for signum in _HANDLED_SIGNALS:
            if signum != signal.SIGCHLD:
                signal.signal(signum, signal.SIG_IGN)
        self.selector.close()


def _tell_result(handle: WorkerHandle, request_id: int) -> Callable[[bool], None]:
    """Return how to answer a worker's own close request."""

    def answer(found: bool) -> None:
        handle.asking = False
        handle.tell(Kind.CLOSE_RESULT, id=request_id, found=found)

    return answer
