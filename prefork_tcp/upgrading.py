"""The master's side of an upgrade (USR2, ``prefork-tcp upgrade``), in both roles.

As the **old master** it starts its successor (``upgrade.spawn``), waits for it to serve,
has its own workers hand every connection over and relays their parcels to the
successor instead of to workers of its own, then exits.  As the **new master** it says
when its workers serve, takes the parcels its predecessor relays, and once the
predecessor has handed everything over (or is gone) it takes charge: the pidfile, the
control socket, systemd.  ``upgrade.py`` has the protocol; ``arbiter.Arbiter`` the loop.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import signal
import socket
import time

from . import handoff
from . import pidfile as pidfiles
from .apploader import App
from .channel import EOF, ChannelError, Kind, Message, close_all
from .config import Config
from .control import ControlError, ControlPlane, socket_path
from .sockets import Listener
from .upgrade import Peer, Predecessor, Successor, program, spawn
from .workerhandle import describe_exit
from .workerpool import WorkerPool

log = logging.getLogger("prefork_tcp.master")

#: After a stop was asked of a new master that failed to take over, when it is killed.
KILL_AFTER = 10.0
#: What a new master's exit code means (``cli``'s exit codes).
EXIT_MEANINGS = {1: "runtime failure", 2: "usage or config error", 3: "workers failed to boot", 4: "application could not be imported"}


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
        if predecessor is not None:
            self.systemd.muted = True  # systemd hears from the master in charge only
            self._watch_peer(predecessor)

    @property
    def owns_paths(self) -> bool:
        """Whether the unix socket files (servers', control) are this master's to remove at exit."""
        return self.predecessor is None and not (self.successor is not None and self.successor.handed_over)

    def upgrade_busy(self) -> str:
        """Why an upgrade or a reload cannot start now ("" if it can)."""
        if self.successor is not None:
            return f"an upgrade is in progress (new master {self.successor.pid})"
        if self.predecessor is not None:
            return f"this master is still taking over from master {self.predecessor.pid}"
        return ""

    def master_info(self) -> dict[str, object]:
        """The ``master`` command's answer: who is in charge and how the last upgrade went."""
        successor = self.successor
        return {
            "pid": os.getpid(),
            "upgrading": successor.pid if successor is not None and not successor.abandoned else 0,
            "upgrade_failure": self.upgrade_failure,
        }

    # -- the old master ------------------------------------------------------------------

    def upgrade(self) -> str:
        """Start a new master from the installed program; return "" or why it did not start."""
        why = "the server is stopping" if self.stopping else self.upgrade_busy()
        if not why and self.reload_backup is not None:
            why = "a reload is in progress"
        if why:
            log.warning("upgrade refused: %s", why)
            return why
        control = (self.control.server.path, self.control.server.sock) if self.control is not None else None
        try:
            successor = spawn(self.listeners, control)
        except OSError as exc:
            self.upgrade_failure = f"cannot start {shlex.join(program())}: {exc.strerror or exc}"
            log.error("upgrade failed: %s; this master keeps serving", self.upgrade_failure)
            return self.upgrade_failure
        self.successor = successor
        self.upgrade_failure = ""
        self._watch_peer(successor)
        log.info("upgrade: started new master %d (%s); it takes over once its workers serve", successor.pid, shlex.join(program()))
        self.systemd.set_status(f"upgrading: new master {successor.pid} starting")
        return ""

    def _from_successor(self, successor: Successor, message: Message) -> None:
        kind = message.kind
        if message is EOF:
            self._unwatch_peer(successor)  # its exit is reaped in _on_other_exit
        elif kind is Kind.PARCEL_ACK:
            self.relay.acknowledged(successor.pid, message["uuid"], message["ok"])
        elif kind is Kind.SUCCESSOR_READY and not successor.abandoned and not successor.handing_over:
            self._hand_over(successor)
        elif kind is Kind.FAILED:
            successor.cause = message["cause"]

    def _hand_over(self, successor: Successor) -> None:
        """The successor serves: every worker hands its connections over, and none is started."""
        successor.handing_over = True
        log.info("new master %d serves: handing every connection over to it", successor.pid)
        self.systemd.set_status(f"upgrading: handing every connection over to master {successor.pid}")
        now = time.monotonic()
        for handle in self.workers.values():
            if handle.killed or handle.stopping:
                continue
            if not handle.ready:  # still booting: it has no connection
                handle.stopping = True
                handle.signal(signal.SIGTERM)
            elif not handle.retire_sent:
                handle.retiring = handle.retiring or "upgrade"
                handle.retire_requested = handle.retire_requested or now
                handle.retire_sent = now
                handle.tell(Kind.RETIRE)

    def _tend_upgrade(self) -> None:
        """A step of the main loop: finish the handover, or give up on a successor that never serves."""
        successor = self.successor
        if successor is None or successor.handed_over:
            return
        now = time.monotonic()
        if successor.handing_over and not self.workers and not len(self.relay):
            # systemd first: by the time the successor speaks to it, it is the main process.
            self.systemd.send(f"MAINPID={successor.pid}", f"STATUS=upgraded: master {successor.pid} serves")
            successor.channel.send(Kind.HANDED_OVER)
            successor.handed_over = True
            log.info("every connection handed over to master %d; exiting", successor.pid)
        elif not successor.handing_over and not successor.abandoned:
            allowed = 2 * self.config.pool.allocate_timeout + 10.0
            if now - successor.started > allowed:
                self._abandon(successor, f"did not serve within {allowed:g}s")
        elif successor.abandoned and now - successor.abandoned > KILL_AFTER:
            os.kill(successor.pid, signal.SIGKILL)
            successor.abandoned = now  # once per KILL_AFTER at most, until it is reaped

    def upgraded(self) -> bool:
        """Whether this master has handed everything over and told its successor so."""
        return self.successor is not None and self.successor.handed_over and not self.successor.channel.pending

    def _abandon(self, successor: Successor, why: str) -> None:
        self.upgrade_failure = f"the new master (pid {successor.pid}) {why}"
        log.error("upgrade failed: %s; stopping it, this master keeps serving", self.upgrade_failure)
        successor.abandoned = time.monotonic()
        os.kill(successor.pid, signal.SIGQUIT)

    def _on_other_exit(self, pid: int, status: int) -> None:
        successor = self.successor
        if successor is None or pid != successor.pid:
            return
        self._read_peer(successor)  # why it failed, if it said so, comes first
        self._unwatch_peer(successor)
        successor.channel.close()
        self.relay.gone(pid)  # parcels it did not take wait for workers of this master again
        self.successor = None
        if successor.handed_over:
            return
        if not successor.abandoned:
            how = describe_exit(status)
            code = os.waitstatus_to_exitcode(status)
            meaning = f" ({EXIT_MEANINGS[code]})" if code in EXIT_MEANINGS else ""
            cause = f": {successor.cause}" if successor.cause else ""
            self.upgrade_failure = f"the new master (pid {pid}) {how}{meaning}{cause}"
            log.error("upgrade failed: %s; this master keeps serving", self.upgrade_failure)
        if successor.handing_over:
            log.warning("the new master ended during the handover: what it had not taken stays with this master")
        self.systemd.set_status(self.status())

    def _spawn_missing(self) -> None:
        if self.successor is None or not self.successor.handing_over:
            super()._spawn_missing()

    def _relay(self) -> None:
        successor = self.successor
        if successor is None or not successor.handing_over:
            super()._relay()
        elif self.relay.waiting and not successor.channel.pending:
            self.relay.deliver([(successor.pid, successor.channel, 0)])

    def stop(self, quick: bool) -> None:
        successor = self.successor
        if successor is not None and not successor.handed_over and not self.stopping:
            log.info("stopping the new master %d too", successor.pid)
            self.upgrade_failure = "the server was stopped during the upgrade"
            successor.abandoned = time.monotonic()
            os.kill(successor.pid, signal.SIGQUIT if quick else signal.SIGTERM)
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
            log.warning("master %d is gone before handing everything over; taking charge", predecessor.pid)
            self._take_charge(predecessor)
        elif kind is Kind.HANDED_OVER:
            self._take_charge(predecessor)
        elif kind is Kind.PARCEL:
            uuid = message["uuid"]
            problem = "handed over twice" if self.relay.holds(uuid) else handoff.check(message.fields, message.fds)
            if problem:
                close_all(message.fds)
                log.error("connection %s from master %d: %s; dropped", uuid, predecessor.pid, problem)
            else:
                self.relay.add(message.fields, message.fds)
            predecessor.channel.send(Kind.PARCEL_ACK, uuid=uuid, ok=True)

    def _take_charge(self, predecessor: Predecessor) -> None:
        """The predecessor handed everything over (or is gone): this master is the one in charge."""
        self.predecessor = None
        predecessor.in_charge = True
        self._unwatch_peer(predecessor)
        predecessor.channel.close()
        if self.config.pidfile:
            try:
                pidfiles.write(self.config.pidfile, replacing=predecessor.pid)
            except (OSError, pidfiles.PidfileError) as exc:
                log.error("cannot write pidfile: %s", exc)
        inherited, predecessor.control = predecessor.control, None
        if self.control is None:
            self._open_control(inherited)
        elif inherited is not None:
            inherited[1].close()
        self.systemd.muted = False
        self.systemd.ready(self.status())
        log.info("upgrade complete: master %d in charge", os.getpid())

    def _open_control(self, inherited: tuple[str, socket.socket] | None = None) -> bool:
        """Listen on the control socket (the one passed on, if its path did not change)."""
        path = socket_path(self.config.control.socket, self.config.pidfile)
        sock = None
        if inherited is not None:
            old_path, sock = inherited
            if old_path != path:
                sock.close()
                sock = None
                _unlink(old_path)
        if not path:
            return True
        try:
            self.control = ControlPlane(path, self.selector, sock)
        except (OSError, ControlError) as exc:
            log.error("cannot create the control socket: %s", exc)
            return False
        log.info("control socket at %s", path)
        return True

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
            if isinstance(peer, Successor) and peer is self.successor and not peer.abandoned:
                self._abandon(peer, "sent garbage")
            elif isinstance(peer, Predecessor) and peer is self.predecessor:
                self._take_charge(peer)

    def _watch_peer(self, peer: Peer) -> None:
        self.selector.register(peer.channel.sock, selectors.EVENT_READ, peer)
        peer.watching = selectors.EVENT_READ

    def _unwatch_peer(self, peer: Peer) -> None:
        if peer.watching:
            self.selector.unregister(peer.channel.sock)
            peer.watching = 0

    def _sync_channels(self) -> None:
        super()._sync_channels()
        for peer in (self.successor, self.predecessor):
            if peer is not None and peer.watching:
                wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.channel.pending else 0)
                if wanted != peer.watching:
                    self.selector.modify(peer.channel.sock, wanted, peer)
                    peer.watching = wanted

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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
