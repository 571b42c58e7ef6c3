"""The master's side of an upgrade (USR2, ``prefork-tcp upgrade``), in both roles.

As the **old master** it starts its successor (``upgrade.spawn``), waits for it to serve,
has its own workers hand every connection over and relays their parcels to the
successor instead of to workers of its own, then exits.  Anything wrong with the
successor (it exits, breaks the channel, does not serve or take the connections in time)
ends the upgrade: the successor is stopped and this master serves on.

As the **new master** it says when its workers serve, takes the parcels its predecessor
relays, and once the predecessor has handed everything over (or died) it takes charge:
the pidfile, the control socket, systemd.  ``upgrade.py`` has the protocol;
``arbiter.Arbiter`` the loop.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from . import pidfile as pidfiles
from .apploader import App
from .channel import EOF, ChannelError, Kind, Message, close_all
from .config import Config, ConfigError
from .control import ControlError, ControlPlane, Master, socket_path
from .exits import MEANINGS
from .sockets import Address, Listener, parse_address, unlink_path, unlink_unix
from .upgrade import Peer, Predecessor, Successor, program, spawn, working_directory
from .workerhandle import describe_exit
from .workerpool import ChannelEnd, WorkerPool

if TYPE_CHECKING:
    from .metrics import MetricsPlane

log = logging.getLogger("prefork_tcp.master")

#: A successor told to stop is killed this long after its own stop deadline.
KILL_AFTER = 10.0
#: The handover may take the old workers' destroy_timeout plus this long.
HANDOVER_GRACE = 30.0
#: A successor that closed its channel is given this long to exit before it is stopped.
CLOSED_GRACE = 2.0
#: A new master in charge tries this long to listen for the metrics the old master still holds.
METRICS_RETRY = 30.0
METRICS_RETRY_EVERY = 0.5


class Upgrading(WorkerPool):
    """``WorkerPool`` with the upgrade in both roles; see the module docstring."""

    def __init__(
        self, config: Config, app_spec: str, listeners: list[Listener], preloaded: App | None, predecessor: Predecessor | None = None
    ) -> None:
        super().__init__(config, app_spec, listeners, preloaded)
        #: The new master this one started (old master role), until it ends or this one exits.
        self.successor: Successor | None = None
        #: The master this one takes over from (new master role), until this one is in charge.
        self.predecessor = predecessor
        #: Why the last upgrade failed ("" if it did not).
        self.upgrade_failure = ""
        #: Where this master started: its successor starts there too.
        self.directory = working_directory()
        #: Until then, try to listen for the metrics again (0: not trying), next at the second.
        self.metrics_retry_until = 0.0
        self.metrics_retry_next = 0.0
        #: Whether the pidfile and the unix socket files (servers', control) are this master's
        #: to remove at exit: not a new master's before it is in charge, nor an old master's after.
        self.owns_paths = predecessor is None
        if predecessor is not None:
            self.systemd.muted = True  # systemd hears from the master in charge only
            self._watch(predecessor)

    def upgrade_busy(self) -> str:
        """Why an upgrade or a reload cannot start now ("" if it can)."""
        if self.successor is not None:
            return f"an upgrade is in progress (new master {self.successor.pid})"
        if self.predecessor is not None:
            return f"this master is still taking over from master {self.predecessor.pid}"
        return ""

    def master_info(self) -> dict[str, object]:
        """The ``master`` command's answer: who is in charge and how the last upgrade goes."""
        successor = self.successor
        going = successor is not None and not (successor.abandoned or successor.exited or self.stopping)
        return {
            "pid": os.getpid(),
            "upgrading": successor.pid if successor is not None and going else 0,
            "upgrade_failure": self.upgrade_failure,
            "stopping": self.stopping,
        }

    # -- the old master ------------------------------------------------------------------

    def upgrade(self) -> str:
        """Start a new master from the installed program; return "" or why it did not start."""
        why = "the server is stopping" if self.stopping else self.upgrade_busy()
        if not why and self.reload_backup is not None:
            why = "a reload is in progress"
        if why:
            log.warning("upgrade refused: %s", why)
            return f"upgrade refused: {why}"
        control = (self.control.path, self.control.sock) if self.control is not None else None
        metrics = (str(self.metrics.address), self.metrics.sock) if self.metrics is not None else None
        try:
            successor = spawn(self.listeners, control, metrics, self.directory)
        except (OSError, subprocess.SubprocessError) as exc:
            self.upgrade_failure = f"cannot start {shlex.join(program())} in {self.directory}: {getattr(exc, 'strerror', None) or exc}"
            log.error("upgrade failed: %s; this master keeps serving", self.upgrade_failure)
            return f"upgrade failed: {self.upgrade_failure}"
        self.successor = successor
        self.upgrade_failure = ""
        self._watch(successor)
        log.info("upgrade: started new master %d (%s); it takes over once its workers serve", successor.pid, shlex.join(program()))
        self.systemd.set_status(f"upgrading: new master {successor.pid} starting")
        return ""

    def _from_successor(self, successor: Successor, message: Message) -> None:
        kind = message.kind
        if message is EOF:  # it is exiting (reaped soon), or _tend_upgrade gives up on it
            self._unwatch(successor)
            successor.closed_at = successor.closed_at or time.monotonic()
        elif kind is Kind.PARCEL_ACK:
            self.relay.acknowledged(successor.pid, message["uuid"], message["ok"])
        elif kind is Kind.SUCCESSOR_READY:
            if not (successor.handing_over or successor.abandoned or successor.exited or self.stopping):
                self._hand_over(successor)
        elif kind is Kind.FAILED:
            successor.cause = message["cause"]

    def _hand_over(self, successor: Successor) -> None:
        """The successor serves: every worker hands its connections over, and none is started."""
        successor.handing_over = time.monotonic()
        log.info("new master %d serves: handing every connection over to it", successor.pid)
        self.systemd.set_status(f"upgrading: handing every connection over to master {successor.pid}")
        for handle in self.workers.values():
            if not (handle.killed or handle.stopping or handle.retire_sent):  # a booting one acts on it once booted
                handle.retiring = handle.retiring or "upgrade"
                handle.cause = handle.cause or "upgrade"
                handle.retire_requested = handle.retire_requested or successor.handing_over
                handle.retire_sent = successor.handing_over
                handle.tell(Kind.RETIRE)

    def _tend_upgrade(self) -> None:
        """A step of the main loop: finish the handover, or give up on a successor that
        does not serve or take the connections in time; kill one that does not stop."""
        successor = self.successor
        if self.metrics_retry_until:
            self._retry_metrics()
        if successor is None:
            if self.predecessor is not None:
                self._pass_on_confirmed(self.predecessor)
            return
        now = time.monotonic()
        if successor.kill_at and now >= successor.kill_at:
            log.warning("new master %d did not stop in time; killing it", successor.pid)
            os.kill(successor.pid, signal.SIGKILL)
            successor.kill_at = now + KILL_AFTER
        if successor.handed_over or successor.abandoned or successor.exited or self.stopping:
            return
        if successor.closed_at and now - successor.closed_at > CLOSED_GRACE:
            self._abandon(successor, "closed its channel and did not exit")
        elif successor.taking and not self.workers and not len(self.relay):
            # systemd first: by the time the successor speaks to it, it is the main process.
            watchdog = ("WATCHDOG=1",) if self.systemd.watchdog_interval else ()
            self.systemd.send(f"MAINPID={successor.pid}", *watchdog, f"STATUS=upgraded: master {successor.pid} serves")
            successor.channel.send(Kind.HANDED_OVER)
            successor.handed_over = True
            self.owns_paths = False
            log.info("every connection handed over to master %d; exiting", successor.pid)
        elif successor.handing_over:
            allowed = self.config.pool.destroy_timeout + HANDOVER_GRACE
            if successor.channel.broken:
                self._abandon(successor, "broke the channel during the handover")
            elif now - successor.handing_over > allowed:
                self._abandon(successor, f"did not take every connection within {allowed:g}s")
        elif now - successor.started > (allowed := 2 * self.config.pool.allocate_timeout + 10.0):
            self._abandon(successor, f"did not serve within {allowed:g}s")

    def upgraded(self) -> bool:
        """Whether this master has handed everything over and told its successor so."""
        return self.successor is not None and self.successor.handed_over and not self.successor.channel.pending

    def waiting_for_successor(self) -> bool:
        """Whether a successor that is not in charge is still running (a stop waits for it)."""
        return self.successor is not None and not self.successor.handed_over

    def _abandon(self, successor: Successor, why: str) -> None:
        """End the upgrade: stop the successor (gracefully: it may hold connections already)."""
        self.upgrade_failure = f"the new master (pid {successor.pid}) {why}"
        log.error("upgrade failed: %s; stopping it, this master keeps serving", self.upgrade_failure)
        successor.abandoned = True
        self._stop_successor(successor, signal.SIGTERM)

    def _stop_successor(self, successor: Successor, signum: int) -> None:
        """Ask the successor to stop; it is killed if it has not after its own stop deadline."""
        successor.kill_at = time.monotonic() + self.config.pool.destroy_timeout + KILL_AFTER
        try:
            os.kill(successor.pid, signum)
        except ProcessLookupError:  # exited already: reaped in this round
            pass

    def _on_other_exit(self, pid: int, status: int) -> None:
        successor = self.successor
        if successor is None or pid != successor.pid:
            return
        successor.exited = True
        if successor.process is not None:
            successor.process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by subprocess
        self._read_peer(successor)  # what it said last (acknowledgements, why it failed) comes first
        self._unwatch(successor)
        successor.channel.close()
        self.relay.gone(pid)  # parcels it did not take wait for workers of this master again
        self.successor = None
        if successor.handed_over:  # it ended as it took over: this master serves on
            log.error("new master %d ended as it took over; this master serves again", pid)
            self.owns_paths = True
            return
        if not (successor.abandoned or self.stopping):
            code = os.waitstatus_to_exitcode(status)
            meaning = f" ({MEANINGS[code]})" if code in MEANINGS else ""
            cause = f": {successor.cause}" if successor.cause else ""
            self.upgrade_failure = f"the new master (pid {pid}) {describe_exit(status)}{meaning}{cause}"
            log.error("upgrade failed: %s; this master keeps serving", self.upgrade_failure)
        if successor.handing_over:
            log.warning("the new master ended during the handover: what it had not taken stays with this master")
        self.systemd.set_status(self.status())

    def _spawn_missing(self) -> None:
        if self.successor is None or not self.successor.taking:
            super()._spawn_missing()

    def _relay(self) -> None:
        successor = self.successor
        if successor is None or not successor.taking:
            super()._relay()
        elif self.relay.waiting and not successor.channel.pending:
            self.relay.deliver([(successor.pid, successor.channel, 0)])

    def stop(self, quick: bool) -> None:
        successor = self.successor
        if successor is not None and not successor.exited and (not self.stopping or quick):
            # In charge or about to be, the successor is the server now; before that, it goes too.
            signum = signal.SIGQUIT if quick else signal.SIGTERM
            if successor.handed_over:
                os.kill(successor.pid, signum)
            else:
                log.info("stopping the new master %d too", successor.pid)
                self.upgrade_failure = self.upgrade_failure or "the server was stopped during the upgrade"
                self._stop_successor(successor, signum)
        super().stop(quick)

    # -- the new master ------------------------------------------------------------------

    def _announce(self) -> None:
        predecessor = self.predecessor
        if predecessor is None:
            super()._announce()
            return
        log.info("serving: %d workers ready; taking over from master %d", self.target, predecessor.pid)
        predecessor.channel.send(Kind.SUCCESSOR_READY)

    def _from_predecessor(self, predecessor: Predecessor, message: Message) -> None:
        kind = message.kind
        if message is EOF:
            if self.stopping:  # it stops too (or told this one to): nothing to take charge of
                self._let_go(predecessor)
            else:
                log.warning("master %d is gone before handing everything over; taking charge", predecessor.pid)
                self._take_charge(predecessor)
        elif kind is Kind.HANDED_OVER:
            self._take_charge(predecessor)
        elif kind is Kind.PARCEL:
            uuid = message["uuid"]
            if self.stopping:  # the old master keeps the connection
                close_all(message.fds)
                predecessor.channel.send(Kind.PARCEL_ACK, uuid=uuid, ok=False)
                return
            problem = self._parcel_problem(message)
            if problem:
                close_all(message.fds)
                log.error("connection %s from master %d: %s; dropped", uuid, predecessor.pid, problem)
            else:
                # Passed on only once the old master can read the acknowledgement: should this
                # master die before, the old one still has the connection, and nobody else does.
                predecessor.unconfirmed.append((message.fields, message.fds))
            predecessor.channel.send(Kind.PARCEL_ACK, uuid=uuid, ok=True)
            self._pass_on_confirmed(predecessor)

    def _pass_on_confirmed(self, predecessor: Predecessor, whatever: bool = False) -> None:
        """Relay the parcels whose acknowledgements have left (``whatever``: all of them,
        this master being in charge now)."""
        if whatever or not predecessor.channel.pending:
            for fields, fds in predecessor.confirmed():
                self.relay.add(fields, fds)

    def _let_go(self, predecessor: Predecessor) -> None:
        self.predecessor = None
        self._unwatch(predecessor)
        predecessor.channel.close()

    def _take_charge(self, predecessor: Predecessor) -> None:
        """The predecessor handed everything over (or died): this master is the one in charge."""
        self._pass_on_confirmed(predecessor, whatever=True)
        self._let_go(predecessor)
        predecessor.in_charge = True
        self.owns_paths = True
        if self.config.pidfile:
            try:
                pidfiles.write(self.config.pidfile, replacing=predecessor.pid)
            except (OSError, pidfiles.PidfileError) as exc:
                log.error("cannot write pidfile: %s", exc)
        inherited, predecessor.control = predecessor.control, None
        self._open_control(inherited)
        inherited, predecessor.metrics = predecessor.metrics, None
        self._open_metrics(inherited, taking_charge=True)
        for address in predecessor.dropped:  # servers no longer configured: their files go
            unlink_unix(parse_address(address))
        self.systemd.unmute()
        if not self.stopping:
            self.systemd.ready(self.status())
        log.info("upgrade complete: master %d in charge", os.getpid())

    def _open_control(self, inherited: tuple[str, socket.socket] | None = None) -> bool:
        """Listen on the control socket: at start, or when a new master takes charge (then
        on the one passed on, unless the config moved it)."""
        path = socket_path(self.config.control.socket, self.config.pidfile)
        sock = None
        if inherited is not None:
            old_path, sock = inherited
            if old_path != path:
                sock.close()
                sock = None
                unlink_path(old_path)
        if not path:
            return True
        try:
            self.control = ControlPlane(path, self.selector, cast(Master, self), sock)
        except (OSError, ControlError) as exc:
            log.error("cannot create the control socket: %s", exc)
            return False
        log.info("control socket at %s", path)
        return True

    def _open_metrics(self, inherited: tuple[str, socket.socket] | None = None, taking_charge: bool = False) -> bool:
        """Serve the metrics: at start, or when a new master takes charge (then on the
        socket passed on, unless the config moved them)."""
        address = self.config.metrics.addr
        sock = None
        if inherited is not None:
            old_address, sock = inherited
            if address is None or old_address != str(address):
                sock.close()
                sock = None
        if address is None:
            return True
        try:
            self.move_metrics(address, sock)
        except ConfigError as exc:
            if not taking_charge:
                log.error("%s", exc)
                return False
            # The old master may hold the port a moment longer.
            log.warning("%s; trying again for %gs", exc, METRICS_RETRY)
            self.metrics_retry_until = time.monotonic() + METRICS_RETRY
        return True

    def _retry_metrics(self) -> None:
        """After taking charge: listen for the metrics once the old master let go of the port
        (tried at most every ``METRICS_RETRY_EVERY`` seconds)."""
        now = time.monotonic()
        if now < self.metrics_retry_next:
            return
        self.metrics_retry_next = now + METRICS_RETRY_EVERY
        try:
            self.move_metrics(self.config.metrics.addr)
        except ConfigError as exc:
            if now >= self.metrics_retry_until:
                self.metrics_retry_until = 0.0
                log.error("%s; no metrics until a reload or a restart", exc)
            return
        self.metrics_retry_until = 0.0

    def move_metrics(self, address: Address | None, sock: socket.socket | None = None) -> None:
        """Serve the metrics at ``address`` (None: not at all), on ``sock`` if it listens
        there already; raises ConfigError when nothing can listen there (the metrics then
        stay where they were)."""
        current = self.metrics
        if current is not None and address == current.address:
            return
        if address is None:
            if current is not None:
                current.close_all()
                self.metrics = None
            return
        if current is not None and address.port == current.address.port:
            # The same port on another host (127.0.0.1 to 0.0.0.0): this master holds it.
            current.close_all()
            self.metrics = None
            try:
                self.metrics = self._metrics_plane(address, sock)
            except ConfigError:
                self.metrics = self._metrics_plane(current.address)  # back where it was
                raise
            return
        plane = self._metrics_plane(address, sock)  # when this raises, the metrics stay
        if current is not None:
            current.close_all()
        self.metrics = plane

    def _metrics_plane(self, address: Address, sock: socket.socket | None = None) -> MetricsPlane:
        from .metrics import MetricsPlane  # prometheus_client is imported only when it is used

        try:
            plane = MetricsPlane(address, self.selector, self, sock)
        except OSError as exc:
            raise ConfigError(f"metrics.addr: cannot listen at {address}: {exc.strerror or exc}") from None
        host, port = plane.sock.getsockname()[:2]
        log.info("metrics at http://%s/metrics", str(Address("tcp", host=host, port=port)).removeprefix("tcp://"))
        return plane

    # -- both ------------------------------------------------------------------------------

    def _read_peer(self, peer: Peer) -> None:
        try:
            for message in peer.messages():
                if isinstance(peer, Successor) and peer is self.successor:
                    self._from_successor(peer, message)
                elif isinstance(peer, Predecessor) and peer is self.predecessor:
                    self._from_predecessor(peer, message)
                else:
                    return  # the upgrade is over: its channel is closed
        except ChannelError as exc:
            log.error("master %d sent garbage on the upgrade channel: %s", peer.pid, exc)
            if isinstance(peer, Successor) and peer is self.successor and not (peer.abandoned or peer.exited):
                self._unwatch(peer)
                self._abandon(peer, "sent garbage")
            elif isinstance(peer, Predecessor) and peer is self.predecessor:
                self._let_go(peer)  # the old master serves on; this one goes, and says why
                self.exit_code = 1
                self.stop(quick=False)

    def _channels(self) -> Iterable[ChannelEnd]:
        yield from super()._channels()
        yield from (peer for peer in (self.successor, self.predecessor) if peer is not None)

    def _close_in_worker(self) -> None:  # pragma: no cover - runs in the child
        super()._close_in_worker()
        if self.successor is not None:
            self.successor.channel.close()
        if self.predecessor is not None:
            self.predecessor.close()

    def _close_peers(self) -> None:
        """At exit: the channel to a successor (a predecessor's stays open for ``cli`` to say why this master failed)."""
        if self.successor is not None:
            self.successor.channel.close()
