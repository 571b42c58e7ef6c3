"""The master's worker processes: forking one, its channel, its slot, its stack dump."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from .channel import EOF, WORKER, Channel, Kind, Message, Truncated
from .scoreboard import Row, Scoreboard

log = logging.getLogger("prefork_tcp.master")

#: Messages read from one worker per round of the master's loop (the rest wait for the next).
MESSAGES_PER_ROUND = 1000
#: How long the master waits for a stuck worker to write its stack before killing it.
STACK_WAIT = 1.0


@dataclass(eq=False)
class WorkerHandle:
    """The master's view of one worker process."""

    id: int
    pid: int
    channel: Channel
    started: float
    slot: int
    max_jobs: int
    stack_fd: int
    generation: int
    ready: bool = False
    stopping: bool = False
    failure: tuple[int, str] | None = None
    #: Why it is being retired ("" while it is not).
    retiring: str = ""
    #: Monotonic time the retirement was decided (0: not retiring).
    retire_requested: float = 0.0
    #: Monotonic time the retire command was sent (0: not yet).
    retire_sent: float = 0.0
    #: Why the master killed it ("" unless it did).
    killed: str = ""
    #: It has handled three quarters of its max_jobs: a successor is started for it.
    budget_low: bool = False
    #: Its application raised; it is handing its connections over and exiting.
    crashed: bool = False
    #: It ran a slow event lately (SLOW): no connection is handed to it before then.
    slow_until: float = 0.0
    #: A close by uuid it asked for is still open (one at a time, however it floods).
    asking: bool = False
    #: The selector events its channel is registered for (0: no longer watched).
    watching: int = 0
    #: Its end of the channel is closed (it exited, or is about to).
    ended: bool = False
    #: Its servers' names, in the order of its scoreboard counters.
    servers: tuple[str, ...] = ()
    #: Why it is being replaced, for the metrics (one of ``tally.RECYCLE_REASONS``).
    cause: str = ""

    @property
    def serving(self) -> bool:
        """Ready and staying: it can take new connections and handed-over ones."""
        return self.ready and not (self.retiring or self.stopping or self.killed or self.ended)

    @property
    def leaving(self) -> bool:
        """Retiring, stopping, killed, or about to retire: it needs no replacement counted."""
        return bool(self.retiring or self.stopping or self.killed or self.budget_low)

    def tell(self, kind: Kind, urgent: bool = False, **fields: Any) -> None:
        """Send a message; it waits in the channel's queue while the socket is full, and the
        master's loop flushes it when the socket is writable again. Never dropped.
        ``urgent`` puts it ahead of the queue."""
        self.channel.send(kind, urgent=urgent, **fields)

    def messages(self) -> Iterator[Message]:
        """Yield the messages waiting on the channel; stop when none is left, or at its end
        (then ``watching`` should end). Raises ChannelError for what is not a message.

        A parcel whose descriptors the master had no room for is refused here: the worker
        keeps that connection and sends it again.
        """
        for _ in range(MESSAGES_PER_ROUND):  # a worker that never stops writing cannot hold the master
            try:
                message = self.channel.receive()
            except Truncated as exc:
                log.warning("could not take connection %s from worker %d: %s", exc.message["uuid"], self.id, exc)
                self.tell(Kind.PARCEL_ACK, uuid=exc.message["uuid"], ok=False)
                continue
            if message is None:
                return
            if message is EOF:
                self.ended = True
                return
            yield message

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def read_stack(self) -> str:
        """Ask the worker for its Python stack (faulthandler on SIGUSR2) and return it."""
        self.signal(signal.SIGUSR2)
        chunks: list[bytes] = []
        deadline = time.monotonic() + STACK_WAIT
        poller = select.poll()  # not select(): the master may hold descriptors above 1024
        poller.register(self.stack_fd, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(min(left, 0.2 if chunks else left) * 1000):
                if chunks:
                    break
                continue
            try:
                chunk = os.read(self.stack_fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace").rstrip() or "(the worker wrote no stack)"

    def close(self) -> None:
        self.channel.close()
        os.close(self.stack_fd)


def fork_worker(
    worker_id: int,
    board: Scoreboard,
    max_jobs: int,
    generation: int,
    become_worker: Callable[[int, socket.socket, int, int, int], None],
    taken: set[int] | frozenset[int] = frozenset(),
) -> WorkerHandle:
    """Fork a worker; the child runs ``become_worker(id, channel, slot, stack_fd, max_jobs)``, never returning.

    Raises OSError (no descriptors, no processes) or RuntimeError (no scoreboard slot),
    with nothing left behind.
    """
    now = time.monotonic()
    slot = board.claim(0, now, taken)
    made: list[socket.socket | int] = []
    try:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        made += [parent_end, child_end]
        stack_r, stack_w = os.pipe()
        made += [stack_r, stack_w]
        pid = os.fork()
    except BaseException:
        board.reset(slot)
        for thing in made:
            thing.close() if isinstance(thing, socket.socket) else os.close(thing)
        raise
    if pid == 0:  # pragma: no cover - runs in the child
        parent_end.close()
        os.close(stack_r)
        become_worker(worker_id, child_end, slot, stack_w, max_jobs)
    child_end.close()
    os.close(stack_w)
    os.set_blocking(stack_r, False)
    board.set_pid(slot, pid)
    return WorkerHandle(worker_id, pid, Channel(parent_end, peer=WORKER), now, slot, max_jobs, stack_r, generation)


def worker_row(handle: WorkerHandle, row: Row, now: float, busy_known: bool) -> dict[str, object]:
    """Return one line of the ``workers`` table; ``busy_known`` when workers mark each event (exec_ttl)."""
    if not handle.ready:
        state = "booting"
    elif handle.retiring or handle.stopping:
        state = "retiring"
    else:
        state = ("busy" if row.busy else "idle") if busy_known else "serving"
    rss = rss_mb(handle.pid)
    return {
        "id": handle.id,
        "pid": handle.pid,
        "state": state,
        "events": row.events,
        "connections": row.connections,
        "rss_mb": round(rss, 1) if rss is not None else None,
        "age": round(now - handle.started, 1),
    }


def rss_mb(pid: int) -> float | None:
    """Return a process's resident memory in MB, or None if it is gone."""
    rss = rss_bytes(pid)
    return rss / (1024 * 1024) if rss is not None else None


def rss_bytes(pid: int) -> int | None:
    """Return a process's resident memory in bytes, or None if it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def describe_exit(status: int) -> str:
    """Return how a process ended, from its wait status."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
