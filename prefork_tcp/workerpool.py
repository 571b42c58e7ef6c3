"""The master's workers: forking them up to the target, reaping them, judging each exit,
watching their limits, retiring them with overlap, stopping them.

``WorkerPool`` is the master's state and its workers' lifecycle; ``upgrading.Upgrading``
adds the upgrade (USR2), and ``arbiter.Arbiter`` the main loop around both: signals, the
workers' messages, the management commands.
A generation is the set of workers started from one configuration; a reload starts the
next one and falls back to the previous configuration if its workers cannot start.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from setproctitle import setproctitle

from . import handoff
from .apploader import App
from .channel import Channel, Kind, Message
from .closing import CloseRequests
from .config import MAX_WORKERS, Config, ConfigError
from .control import ControlPlane
from .exits import EXIT_APP_LOAD, EXIT_BOOT_FAILED
from .plane import Plane
from .scoreboard import MAX_SERVERS, Scoreboard, SlotWriter
from .signals import SignalPipe
from .sockets import Listener, rebind
from .supervisor import Backoff, Limits, Watch, jittered_max_jobs, judge
from .systemd import Notifier
from .tally import Totals
from .workerhandle import WorkerHandle, describe_exit, fork_worker, rss_mb
from .workerprocess import WorkerContext
from .workerprocess import run as run_worker

if TYPE_CHECKING:
    from .metrics import MetricsPlane

log = logging.getLogger("prefork_tcp.master")

#: The longest the master sleeps without looking at its workers.
TICK = 1.0
#: Scoreboard slots: enough for MAX_WORKERS, their replacements and retiring workers.
SLOTS = 4 * MAX_WORKERS
#: Crashes (an application exception after ready) this far apart do not count as repeated.
CRASH_MEMORY = 60.0
#: Deaths that mean the worker crashed, and may again: they back off like application
#: failures. A worker killed from outside (SIGKILL, the OOM killer) is replaced at once.
_CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)


class ChannelEnd(Protocol):
    """The master's end of a channel it watches: a worker's, or the other master's during an upgrade."""

    channel: Channel
    watching: int


class WorkerPool:
    """The master's workers and what it knows of them; see the module docstring."""

    def __init__(self, config: Config, app_spec: str, listeners: list[Listener], preloaded: App | None) -> None:
        self.config = config
        self.app_spec = app_spec
        self.listeners = listeners
        self.preloaded = preloaded
        self.target = config.pool.num_workers
        self.limits = Limits.from_pool(config.pool)
        self.board = Scoreboard(SLOTS)
        self.watch = Watch()
        self.workers: dict[int, WorkerHandle] = {}
        self.selector = selectors.DefaultSelector()
        #: Connections between two workers, and closes by uuid waiting for answers.
        self.relay = handoff.Relay()
        self.closes = CloseRequests()
        #: The master's own descriptors a forked worker closes (set by ``Arbiter.run``).
        self.control: ControlPlane | None = None
        self.metrics: MetricsPlane | None = None
        #: What the metrics count beyond the live workers' slots.
        self.totals = Totals()
        self.signals: SignalPipe | None = None
        self.next_id = 1
        self.generation = 1
        #: While a reload is in progress: what to go back to if the new workers fail.
        self.reload_backup: tuple[Config, str, int] | None = None
        self.ever_ready = False
        self.announced = False
        #: Delays after failures: 0.5 s doubling to 30 s (the first crash is replaced at once).
        self.boot_failures = Backoff()
        self.crashes = Backoff(free=1, memory=CRASH_MEMORY)
        self.spawn_failures = Backoff()
        self.spawn_after = 0.0
        self.next_check = 0.0
        self.stopping = False
        self.quick = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        #: The service manager, if one watches (systemd.py).
        self.systemd = Notifier()
        #: Told 0 once a worker serves (``--daemon``: the waiting parent exits with it).
        self.on_serving: Callable[[int], None] | None = None

    # -- spawning and reaping ------------------------------------------------------------

    def _spawn_missing(self) -> None:
        if self.stopping or (self.spawn_after and time.monotonic() < self.spawn_after):
            return
        self.spawn_after = 0.0
        while sum(1 for w in self.workers.values() if not w.leaving) < self.target:
            try:
                handle = fork_worker(
                    self.next_id,
                    self.board,
                    jittered_max_jobs(self.config.pool.max_jobs),
                    self.generation,
                    self._become_worker,
                    {w.slot for w in self.workers.values()},
                )
            except (OSError, RuntimeError) as exc:  # no descriptors, processes or slots: try again later
                now = time.monotonic()
                delay = self.spawn_failures.fail(now)
                log.error("cannot start a worker: %s; retrying in %.1fs", exc, delay)
                self.spawn_after = now + delay
                return
            self.spawn_failures.reset()
            self.next_id += 1
            handle.servers = tuple(lst.name for lst in self.listeners[:MAX_SERVERS])
            self.workers[handle.pid] = handle
            self._watch(handle)
            log.debug("started worker %d (pid %d)", handle.id, handle.pid)

    def _become_worker(
        self, worker_id: int, channel: socket.socket, slot: int, stack_fd: int, max_jobs: int
    ) -> None:  # pragma: no cover - runs in the child
        code = 1
        try:
            self._close_in_worker()
            code = run_worker(
                WorkerContext(
                    worker_id,
                    self.config,
                    self.app_spec,
                    self.listeners,
                    channel,
                    self.preloaded,
                    SlotWriter(self.board, slot),
                    max_jobs,
                    stack_fd,
                )
            )
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", worker_id)
        finally:
            logging.shutdown()
            os._exit(code)

    def _close_in_worker(self) -> None:  # pragma: no cover - runs in the child
        """Close, in a freshly forked worker, the master's own descriptors."""
        self.selector.close()
        for other in self.workers.values():
            other.close()
        self.relay.close()
        for plane in self._planes():
            plane.close_all() if plane is not self.control else self.control.close_all(unlink=False)
        if self.signals is not None:
            self.signals.close()

    def _planes(self) -> list[Plane[Any]]:
        """The master's small servers: the control socket, the metrics endpoint."""
        return [plane for plane in (self.control, self.metrics) if plane is not None]

    def _channels(self) -> Iterable[ChannelEnd]:
        """Whose channels the master watches: its workers' (and, during an upgrade, the other master's)."""
        return self.workers.values()

    def _watch(self, end: ChannelEnd) -> None:
        self.selector.register(end.channel.sock, selectors.EVENT_READ, end)
        end.watching = selectors.EVENT_READ

    def _sync_channels(self) -> None:
        """Watch each channel for writability exactly while messages wait in its queue."""
        for end in self._channels():
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if end.channel.pending else 0)
            if end.watching and end.watching != wanted:
                self.selector.modify(end.channel.sock, wanted, end)
                end.watching = wanted

    def _unwatch(self, end: ChannelEnd) -> None:
        if end.watching:
            self.selector.unregister(end.channel.sock)
            end.watching = 0

    def _parcel_problem(self, message: Message) -> str:
        """What is wrong with a parcel handed to this master ("" if nothing)."""
        return "handed over twice" if self.relay.holds(message["uuid"]) else handoff.check(message.fields, message.fds)

    def _on_ready(self, handle: WorkerHandle) -> None:
        handle.ready = True
        self.boot_failures.reset()
        self.ever_ready = True
        log.info("worker %d (pid %d) ready", handle.id, handle.pid)
        serving = sum(w.serving for w in self.workers.values())
        if not self.announced and serving >= self.target:
            self.announced = True
            self._announce()
        if self.on_serving is not None:
            self.on_serving(0)  # serving, though perhaps not all of them yet: started

    def _announce(self) -> None:
        """Every worker of the first generation serves."""
        log.info("serving: %d workers ready", self.target)
        self.systemd.ready(self.status())

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = self.workers.pop(pid, None)
            if handle is not None:
                self._on_exit(handle, status)
            else:
                self._on_other_exit(pid, status)

    def _on_other_exit(self, pid: int, status: int) -> None:
        """A child that is not a worker ended (a new master started by an upgrade)."""

    def _on_exit(self, handle: WorkerHandle, status: int) -> None:
        self._unwatch(handle)
        handle.close()
        self.totals.absorb(handle.pid, self.board.row(handle.slot), self.board.counts(handle.slot, len(handle.servers)), handle.servers)
        if handle.ready and not (self.stopping or handle.stopping):
            self.totals.recycled(handle.cause)
        self.board.reset(handle.slot)
        self.closes.gone(handle.pid)
        self.relay.gone(handle.pid)
        how = describe_exit(status)
        if handle.killed and not handle.ready:
            handle.failure = handle.failure or (EXIT_BOOT_FAILED, f"worker {handle.id} (pid {handle.pid}) {handle.killed}")
            self._on_boot_failure(handle, how)
        elif handle.killed:
            log.warning("worker %d (pid %d) %s (%s); starting a replacement", handle.id, handle.pid, how, handle.killed)
        elif handle.crashed:
            log.warning("worker %d (pid %d) %s after its application failed; starting a replacement", handle.id, handle.pid, how)
            self._on_crash()
        elif handle.retiring and handle.ready:
            log.info("worker %d (pid %d) retired (%s): %s", handle.id, handle.pid, handle.retiring, how)
        elif handle.ready or handle.stopping:
            level = logging.INFO if self.stopping or handle.stopping else logging.WARNING
            log.log(
                level, "worker %d (pid %d) %s%s", handle.id, handle.pid, how, "" if level == logging.INFO else "; starting a replacement"
            )
            if level != logging.INFO and os.WIFSIGNALED(status) and os.WTERMSIG(status) in _CRASH_SIGNALS:
                self._on_crash()  # the interpreter itself crashed (a C extension?): it may again
        else:
            self._on_boot_failure(handle, how)

    def _on_crash(self) -> None:
        """A serving worker failed: replace it at once, but back off when it keeps happening."""
        now = time.monotonic()
        delay = self.crashes.fail(now)
        if delay:
            log.error("workers failed %d times in a row; the next one starts in %.1fs", self.crashes.count, delay)
            self.spawn_after = max(self.spawn_after, now + delay)

    def _on_boot_failure(self, handle: WorkerHandle, how: str) -> None:
        code, cause = handle.failure or (EXIT_BOOT_FAILED, f"worker {handle.id} (pid {handle.pid}) {how} before it was ready")
        if self.stopping:
            return
        log.error("%s", cause)
        if not self.ever_ready:
            log.error("no worker could start; shutting down")
            self.exit_code = EXIT_APP_LOAD if code == EXIT_APP_LOAD else EXIT_BOOT_FAILED
            self.stop(quick=True)
            for other in self.workers.values():  # none has a connection yet
                other.signal(signal.SIGKILL)
            return
        if self.reload_backup is not None and handle.generation == self.generation:
            self._abort_reload()
            return
        now = time.monotonic()
        delay = self.boot_failures.fail(now)
        log.error("worker %d failed to start (%d in a row); retrying in %.1fs", handle.id, self.boot_failures.count, delay)
        self.spawn_after = now + delay

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        self.closes.expire(now)
        if self.stopping:
            if now >= self.stop_deadline:
                for handle in self.workers.values():
                    log.warning("worker %d (pid %d) did not stop in time; killing it", handle.id, handle.pid)
                    handle.signal(signal.SIGKILL)
                self.stop_deadline = now + TICK
            return
        pool = self.config.pool
        for handle in self.workers.values():
            if not handle.ready and not handle.stopping and not handle.failure and now - handle.started > pool.allocate_timeout:
                handle.failure = (
                    EXIT_BOOT_FAILED,
                    f"worker {handle.id} (pid {handle.pid}) was not ready after {pool.allocate_timeout:g}s (allocate_timeout); killed",
                )
                handle.signal(signal.SIGKILL)
            elif handle.retire_sent and not handle.killed and now - handle.retire_sent > pool.destroy_timeout:
                handle.killed = f"still retiring after destroy_timeout ({pool.destroy_timeout:g}s)"
                handle.signal(signal.SIGKILL)

    # -- limits and recycling ------------------------------------------------------------

    def _supervise(self) -> None:
        now = time.monotonic()
        if now < self.next_check or self.stopping:
            return
        self.next_check = now + self.config.pool.supervisor.watch_tick
        if self.announced and self.reload_backup is None:
            self.systemd.set_status(self.status())
        for handle in list(self.workers.values()):
            if not handle.ready or handle.killed:
                continue
            rss = rss_mb(handle.pid) if self.limits.needs_memory else None
            row = self.board.row(handle.slot)
            verdict = judge(row, self.watch.observe(row, now), self.limits, now, handle.max_jobs, rss)
            if verdict is None:
                continue
            if verdict.action == "kill":
                self._kill_stuck(handle, verdict.reason, verdict.limit)
            else:
                self.retire(handle, verdict.reason, verdict.limit)

    def _kill_stuck(self, handle: WorkerHandle, reason: str, cause: str) -> None:
        stack = handle.read_stack()
        log.error("worker %d (pid %d): %s; killing it. Its stack:\n%s", handle.id, handle.pid, reason, stack)
        handle.killed = reason
        handle.cause = handle.cause or cause
        handle.signal(signal.SIGKILL)

    def retire(self, handle: WorkerHandle, reason: str, cause: str) -> None:
        """Replace a worker without dropping its connections: a replacement is started,
        then the worker hands every connection over and exits. ``cause`` is the reason
        the metrics count (``tally.RECYCLE_REASONS``)."""
        if handle.retiring or handle.stopping or handle.killed or self.stopping:
            return
        handle.retiring = reason
        handle.cause = cause
        handle.retire_requested = time.monotonic()
        log.info("retiring worker %d (pid %d): %s", handle.id, handle.pid, reason)

    def _send_retirements(self) -> None:
        """Tell retiring workers to hand over once enough others are ready to take over."""
        if self.stopping:
            return
        serving = sum(w.serving for w in self.workers.values())
        if not serving:
            return
        # Waiting for replacements ends after allocate_timeout: then the workers serving take over.
        overdue = time.monotonic() - self.config.pool.allocate_timeout
        for handle in self.workers.values():
            if handle.retiring and not handle.retire_sent and (serving >= self.target or handle.retire_requested < overdue):
                handle.tell(Kind.RETIRE)
                handle.retire_sent = time.monotonic()
        if self.reload_backup is not None and not any(w.retiring and not w.retire_sent for w in self.workers.values()):
            self.reload_backup = None
            log.info("reload complete: %d workers of generation %d serving", serving, self.generation)
            self.totals.forget_servers({name for w in self.workers.values() for name in w.servers})
            self.systemd.ready(self.status())

    def _relay(self) -> None:
        if not self.relay.waiting:
            return
        # While the server stops, workers still alive adopt what waits here only to finish it
        # with its CLOSE delivered, which closing it in the master could not do.
        if self.stopping:
            takers = [w for w in self.workers.values() if w.ready and w.watching and not (w.killed or w.crashed)]
        else:
            takers = [w for w in self.workers.values() if w.serving]
            now = time.monotonic()
            takers = [w for w in takers if w.slow_until <= now] or takers  # slow events: elsewhere if possible
        targets = [(w.pid, w.channel, self.board.row(w.slot).connections) for w in takers if not w.channel.pending]
        self.relay.deliver(targets)

    # -- generations and stopping --------------------------------------------------------

    def _apply(self, config: Config, app_spec: str, listeners: list[Listener], target: int) -> None:
        self.config, self.app_spec, self.listeners, self.target = config, app_spec, listeners, target
        self.limits = Limits.from_pool(config.pool)
        os.umask(config.umask)
        self._set_title()

    def _abort_reload(self) -> None:
        assert self.reload_backup is not None
        config, app_spec, target = self.reload_backup
        self.reload_backup = None
        log.error("reload failed: the new workers could not start; the previous workers keep serving")
        self._apply(config, app_spec, self._rebind(config), target)
        for handle in self.workers.values():
            if handle.generation == self.generation:
                if handle.ready:
                    self.retire(handle, "reload failed", "reload")
                else:
                    handle.signal(signal.SIGKILL)
            elif handle.retiring and not handle.retire_sent:
                handle.retiring = handle.cause = ""
        self.generation += 1
        self.systemd.ready("reload failed: the previous workers keep serving")

    def status(self) -> str:
        """One line for ``systemctl status``: workers serving, connections open."""
        serving = [w for w in self.workers.values() if w.serving]
        connections = sum(self.board.row(w.slot).connections for w in self.workers.values() if w.ready)
        return f"{len(serving)} worker{'s' * (len(serving) != 1)} serving, {connections} connection{'s' * (connections != 1)}"

    def _rebind(self, config: Config) -> list[Listener]:
        try:
            return rebind(self.listeners, config.servers)
        except ValueError as exc:
            raise ConfigError(f"tcp.servers: {exc}") from None

    def _set_title(self) -> None:
        setproctitle(f"{self.config.proc_name}: master [{self.app_spec}]")

    def stop(self, quick: bool) -> None:
        """Stop every worker (gracefully unless ``quick``); the loop exits once all are gone."""
        if self.stopping and (self.quick or not quick):
            return
        log.info("stopping %s", "quickly" if quick else "gracefully")
        if not self.stopping:
            self.systemd.stopping()
            self.stop_deadline = time.monotonic() + self.config.pool.destroy_timeout
            for lst in self.listeners:
                lst.sock.close()
        if not self.stopping:
            self._relay()  # parcels waiting here go first: their new owners finish them with CLOSE
        self.stopping = True
        self.quick = quick
        for handle in self.workers.values():
            handle.stopping = True
            # The command goes ahead of anything queued, and the signal rings the worker's
            # bell in case its channel is still full of older messages (SPEC §6).
            handle.tell(Kind.QUIT if quick else Kind.STOP, urgent=True)
            handle.signal(signal.SIGQUIT if quick else signal.SIGTERM)
