"""The master process: fork workers, watch them, recycle and replace them, act on signals.

Signal handlers do nothing; the interpreter writes each signal's number into a pipe
and the main loop acts on it.  The master never accepts a connection and never runs
application code (unless ``--preload`` imported it before forking).  It learns each
worker's state from the shared scoreboard, and relays connections from retiring
workers to live ones.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable

from setproctitle import setproctitle

from . import handoff, logs
from .apploader import App
from .channel import ChannelError, Kind, Message, close_all
from .closing import CloseRequests
from .config import MAX_WORKERS, Config, ConfigError
from .control import ControlClient, ControlError, ControlPlane, socket_path
from .pool import WorkerHandle, describe_exit, fork_worker, rss_mb, worker_row
from .scoreboard import Scoreboard, SlotWriter
from .signals import SignalPipe
from .sockets import Listener, rebind, unlink_unix
from .supervisor import Backoff, Limits, Watch, jittered_max_jobs, judge
from .workerproc import EXIT_APP_LOAD, EXIT_BOOT_FAILED, WorkerContext
from .workerproc import run as run_worker

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
#: The longest the master sleeps without looking at its workers.
TICK = 1.0
#: How often the master retries parcels no worker could take yet.
RELAY_RETRY = 0.02
#: Scoreboard slots: enough for MAX_WORKERS, their replacements and retiring workers.
SLOTS = 4 * MAX_WORKERS
#: How long a close by uuid waits for the workers' answers.
CLOSE_TIMEOUT = 5.0
#: Crashes (an application exception after ready) this far apart do not count as repeated.
CRASH_MEMORY = 60.0
#: Deaths that mean the worker crashed, and may again: they back off like application
#: failures. A worker killed from outside (SIGKILL, the OOM killer) is replaced at once.
_CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)
#: After a step of the main loop raised, the loop waits at least this long before the next round.
FAULT_PAUSE = 0.1

Reloader = Callable[[], "tuple[Config, str]"]


class Arbiter:
    """Runs the master's main loop; ``run()`` returns the process exit code."""

    def __init__(
        self, config: Config, app_spec: str, listeners: list[Listener], preloaded: App | None, reloader: Reloader | None = None
    ) -> None:
        self.config = config
        self.app_spec = app_spec
        self.listeners = listeners
        self.preloaded = preloaded
        self.reloader = reloader
        self.target = config.pool.num_workers
        self.limits = Limits.from_pool(config.pool)
        self.board = Scoreboard(SLOTS)
        self.watch = Watch()
        self.relay = handoff.Relay()
        self.closes = CloseRequests()
        #: Connections closed by uuid while their parcel waited in the relay.
        self.close_on_adoption: set[str] = set()
        self.control: ControlPlane | None = None
        self.workers: dict[int, WorkerHandle] = {}
        self.selector = selectors.DefaultSelector()
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
        #: A step of the main loop raised in this round (the next wait is at least FAULT_PAUSE).
        self.faulted = False
        self._fault_logged: dict[str, float] = {}
        self.spawn_after = 0.0
        self.next_check = 0.0
        self.stopping = False
        self.quick = False
        self.stop_deadline = 0.0
        self.exit_code = 0

    # -- main loop ----------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return 0 for a clean stop, 3 or 4 for a failed boot."""
        self._set_title()
        self.signals = SignalPipe(_HANDLED_SIGNALS)
        self.selector.register(self.signals.fileno(), selectors.EVENT_READ, None)
        path = socket_path(self.config.control.socket, self.config.pidfile)
        if path:
            try:
                self.control = ControlPlane(path, self.selector)
            except (OSError, ControlError) as exc:
                log.error("cannot create the control socket: %s", exc)
                self._cleanup()
                return 1
            log.info("control socket at %s", path)
        for lst in self.listeners:
            log.info("listening at %s (server %s)", lst.bound, lst.name)
        log.info("master %d starting %d workers for %s", os.getpid(), self.target, self.app_spec)
        steps = (
            self._spawn_missing,
            self._wait,
            self._reap,
            self._check_timeouts,
            self._supervise,
            self._send_retirements,
            self._relay,
            self._sync_channels,
        )
        try:
            while True:
                for step in steps:
                    self._guarded(step)
                if self.stopping and not self.workers:
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
        if self.control is not None and self.control.deadline:
            timeout = min(timeout, max(0.0, self.control.deadline - now))
        if self.faulted:  # a step raised since the last wait: do not spin on it
            timeout = max(timeout, FAULT_PAUSE)
            self.faulted = False
        for key, events in self.selector.select(timeout):
            data = key.data
            if data is None:
                assert self.signals is not None
                for signum in self.signals.drain():
                    self._on_signal(signum)
            elif isinstance(data, WorkerHandle):
                if events & selectors.EVENT_WRITE:
                    data.channel.flush()
                if events & selectors.EVENT_READ:
                    self._read_channel(data)
            elif isinstance(data, ControlClient):
                assert self.control is not None
                self.control.serve(data, events, self)
            elif isinstance(data, ControlPlane):
                data.accept(self)
        if self.control is not None:
            self.control.tend(self)

    def _sync_channels(self) -> None:
        """Watch a worker's channel for writability exactly while messages wait in its queue."""
        for handle in self.workers.values():
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if handle.channel.pending else 0)
            if handle.watching and handle.watching != wanted:
                self.selector.modify(handle.channel.sock, wanted, handle)
                handle.watching = wanted

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
            log.warning("SIGUSR2 (re-exec) is not supported by this version; ignored")

    # -- spawning and reaping -----------------------------------------------------------

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
            self.workers[handle.pid] = handle
            self.selector.register(handle.channel.sock, selectors.EVENT_READ, handle)
            handle.watching = selectors.EVENT_READ
            log.debug("started worker %d (pid %d)", handle.id, handle.pid)

    def _become_worker(
        self, worker_id: int, channel: socket.socket, slot: int, stack_fd: int, max_jobs: int
    ) -> None:  # pragma: no cover - runs in the child
        code = 1
        try:
            self.selector.close()
            for other in self.workers.values():
                other.close()
            self.relay.close()
            if self.control is not None:
                for client in self.control.clients:
                    client.sock.close()
                self.control.server.sock.close()
            if self.signals is not None:
                self.signals.close()
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
            self._retiring_itself(handle, f"handled its max_jobs ({handle.max_jobs} events)")
        elif kind is Kind.APP_FAILED:
            handle.crashed = True
            self._retiring_itself(handle, "its application failed")
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

    def _retiring_itself(self, handle: WorkerHandle, reason: str) -> None:
        """A worker hands its connections over without being asked: take it off the list
        of workers that adopt connections (its parcels follow this message)."""
        if not (handle.retiring or handle.stopping):
            handle.retiring = reason
            handle.retire_requested = time.monotonic()
            log.info("worker %d (pid %d) hands its connections over: %s", handle.id, handle.pid, reason)
        handle.retire_sent = handle.retire_sent or time.monotonic()

    def _take_parcel(self, handle: WorkerHandle, message: Message) -> None:
        """A worker hands a connection over: keep it until another worker adopts it."""
        uuid = message["uuid"]
        problem = "handed over twice" if self.relay.holds(uuid) else handoff.check(message.fields, message.fds)
        if problem:
            close_all(message.fds)
            self._kill_garbage(handle, f"parcel {uuid}: {problem}")
            return
        self.relay.add(message.fields, message.fds)
        handle.tell(Kind.PARCEL_ACK, uuid=uuid, ok=True)

    def _kill_garbage(self, handle: WorkerHandle, why: str) -> None:
        log.error("worker %d (pid %d) sent garbage on its channel (%s); killing it", handle.id, handle.pid, why)
        self._unwatch(handle)
        if not handle.killed:
            handle.killed = "sent garbage on its channel"
            handle.signal(signal.SIGKILL)

    def _unwatch(self, handle: WorkerHandle) -> None:
        if handle.watching:
            self.selector.unregister(handle.channel.sock)
            handle.watching = 0

    def _on_ready(self, handle: WorkerHandle) -> None:
        handle.ready = True
        self.boot_failures.reset()
        self.ever_ready = True
        log.info("worker %d (pid %d) ready", handle.id, handle.pid)
        serving = sum(w.serving for w in self.workers.values())
        if not self.announced and serving >= self.target:
            self.announced = True
            log.info("serving: %d workers ready", self.target)

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

    def _on_exit(self, handle: WorkerHandle, status: int) -> None:
        self._read_channel(handle)
        self._unwatch(handle)
        handle.close()
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

    # -- limits and recycling -----------------------------------------------------------

    def _supervise(self) -> None:
        now = time.monotonic()
        if now < self.next_check or self.stopping:
            return
        self.next_check = now + self.config.pool.supervisor.watch_tick
        for handle in list(self.workers.values()):
            if not handle.ready or handle.killed:
                continue
            rss = rss_mb(handle.pid) if self.limits.needs_memory else None
            row = self.board.row(handle.slot)
            verdict = judge(row, self.watch.observe(row, now), self.limits, now, handle.max_jobs, rss)
            if verdict is None:
                continue
            if verdict.action == "kill":
                self._kill_stuck(handle, verdict.reason)
            else:
                self.retire(handle, verdict.reason)

    def _kill_stuck(self, handle: WorkerHandle, reason: str) -> None:
        stack = handle.read_stack()
        log.error("worker %d (pid %d): %s; killing it. Its stack:\n%s", handle.id, handle.pid, reason, stack)
        handle.killed = reason
        handle.signal(signal.SIGKILL)

    def retire(self, handle: WorkerHandle, reason: str) -> None:
        """Replace a worker without dropping its connections: a replacement is started,
        then the worker hands every connection over and exits."""
        if handle.retiring or handle.stopping or handle.killed or self.stopping:
            return
        handle.retiring = reason
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

    def _relay(self) -> None:
        if not self.relay.waiting:
            return
        # While the server stops, workers still alive adopt what waits here only to finish it
        # with its CLOSE delivered, which closing it in the master could not do.
        if self.stopping:
            takers = [w for w in self.workers.values() if w.ready and w.watching and not (w.killed or w.crashed)]
        else:
            takers = [w for w in self.workers.values() if w.serving]
        targets = [(w.pid, w.channel, self.board.row(w.slot).connections) for w in takers if not w.channel.pending]
        self.relay.deliver(targets)

    # -- commands -------------------------------------------------------------------------

    def worker_rows(self) -> list[dict[str, object]]:
        """The ``workers`` table: one row per worker process, oldest first."""
        now = time.monotonic()
        busy_known = self.limits.needs_busy
        return [worker_row(w, self.board.row(w.slot), now, busy_known) for w in sorted(self.workers.values(), key=lambda w: w.id)]

    def close_connection(self, uuid: str, done: Callable[[bool], None], exclude: int = 0) -> None:
        """Ask every worker to close connection ``uuid``; ``done(found)`` once they answered."""
        if self.relay.holds(uuid):  # on its way between workers: closed as soon as one adopts it
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
            self.retire(handle, reason)

    def reload(self) -> None:
        """SIGHUP or ``reload``: re-read the config and replace every worker with overlap."""
        if self.stopping or self.reloader is None:
            return
        try:
            config, app_spec = self.reloader()
            listeners = self._rebind(config)
            if config.log != self.config.log:
                try:
                    logs.setup(config.log)
                except OSError as exc:
                    raise ConfigError(f"log.file: cannot open {config.log.file!r}: {exc.strerror}") from None
        except ConfigError as exc:
            log.error("config not reloaded: %s; the current workers keep serving", exc)
            return
        except Exception:  # a bug in loading must not end the master either
            log.exception("config not reloaded; the current workers keep serving")
            return
        log.info("reloading %s", config.source or "the configuration")
        self.reload_backup = (self.config, self.app_spec, self.target)
        self._apply(config, app_spec, listeners, config.pool.num_workers)
        self.generation += 1
        self.replace_all("reload")

    def _abort_reload(self) -> None:
        assert self.reload_backup is not None
        config, app_spec, target = self.reload_backup
        self.reload_backup = None
        log.error("reload failed: the new workers could not start; the previous workers keep serving")
        self._apply(config, app_spec, self._rebind(config), target)
        for handle in self.workers.values():
            if handle.generation == self.generation:
                if handle.ready:
                    self.retire(handle, "reload failed")
                else:
                    handle.signal(signal.SIGKILL)
            elif handle.retiring and not handle.retire_sent:
                handle.retiring = ""
        self.generation += 1

    def _apply(self, config: Config, app_spec: str, listeners: list[Listener], target: int) -> None:
        self.config, self.app_spec, self.listeners, self.target = config, app_spec, listeners, target
        self.limits = Limits.from_pool(config.pool)
        os.umask(config.umask)
        self._set_title()

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
            self.retire(min(staying, key=lambda w: w.id), "SIGTTOU")

    # -- stopping ------------------------------------------------------------------------

    def stop(self, quick: bool) -> None:
        """Stop every worker (gracefully unless ``quick``); the loop exits once all are gone."""
        if self.stopping and (self.quick or not quick):
            return
        log.info("stopping %s", "quickly" if quick else "gracefully")
        if not self.stopping:
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

    def _cleanup(self) -> None:
        for handle in self.workers.values():
            handle.signal(signal.SIGKILL)
        self.relay.close()
        if self.control is not None:
            self.control.close_all()
        for lst in self.listeners:
            lst.sock.close()
            unlink_unix(lst.address)
        if self.signals is not None:
            self.signals.close()
        self.selector.close()

    def _rebind(self, config: Config) -> list[Listener]:
        try:
            return rebind(self.listeners, config.servers)
        except ValueError as exc:
            raise ConfigError(f"tcp.servers: {exc}") from None

    def _set_title(self) -> None:
        setproctitle(f"{self.config.proc_name}: master [{self.app_spec}]")


def _tell_result(handle: WorkerHandle, request_id: int) -> Callable[[bool], None]:
    """Return how to answer a worker's own close request."""

    def answer(found: bool) -> None:
        handle.asking = False
        handle.tell(Kind.CLOSE_RESULT, id=request_id, found=found)

    return answer
