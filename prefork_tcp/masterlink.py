"""A worker's end of its channel to the master: telling, receiving, waiting.

The channel's messages are in ``channel.py`` (both ends); this is how a worker's loop
uses it: messages that cannot go out at once wait in the channel's queue and the epoll
interest follows; a parcel whose descriptors did not all arrive is refused at once so
the master offers it elsewhere; the channel's end means the master is gone.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

from .channel import EOF, MASTER, Channel, ChannelError, Kind, Message, Truncated
from .logs import Throttle

log = logging.getLogger("prefork_tcp.worker")


class MasterLink:
    """The worker's end of the channel, watched in the worker's epoll set."""

    def __init__(self, sock: socket.socket, epoll: select.epoll, warnings: Throttle, on_lost: Callable[[], None]) -> None:
        self.channel = Channel(sock, peer=MASTER)
        self.epoll = epoll
        self.warnings = warnings
        #: Called once when the master is found gone.
        self.on_lost = on_lost
        #: The master is gone (its end of the channel closed, or a send failed).
        self.gone = False
        epoll.register(self.channel.fileno(), select.EPOLLIN)

    def fileno(self) -> int:
        return self.channel.fileno()

    def tell(self, kind: Kind, **fields: Any) -> None:
        """Send the master a message; it waits in the channel's queue if the socket is full."""
        self.channel.send(kind, **fields)
        if self.channel.broken:
            self.lost()
        elif self.channel.pending and not self.gone:
            self.epoll.modify(self.channel.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def flush(self) -> None:
        """Send what waits in the queue (the socket became writable)."""
        if self.channel.flush() and not self.gone:
            self.epoll.modify(self.channel.fileno(), select.EPOLLIN)

    def messages(self) -> Iterator[Message]:
        """Yield the master's messages waiting on the channel; at its end, ``gone`` is set.

        A parcel whose descriptors did not all arrive (no room for them) is refused here:
        the master offers it to another worker.
        """
        while True:
            try:
                message = self.channel.receive()
            except Truncated as exc:
                uuid = exc.message["uuid"]
                self.warnings.warn("adopt", "cannot adopt connection %s: %s; the master sends it elsewhere", uuid, exc)
                self.tell(Kind.PARCEL_ACK, uuid=uuid, ok=False)
                continue
            except ChannelError as exc:
                log.error("ignoring a bad message from the master: %s", exc)
                continue
            if message is None:
                return
            if message is EOF:
                self.lost()
                return
            yield message

    def wait(self, timeout: float, writable: bool = False) -> list[Message]:
        """Wait up to ``timeout`` for the channel (to be writable too, if asked); return the
        messages that came. The channel's queue is flushed on the way."""
        poller = select.poll()
        want_out = writable or self.channel.pending
        poller.register(self.channel.fileno(), select.POLLIN | (select.POLLOUT if want_out else 0))
        ready = poller.poll(max(0.0, timeout) * 1000)
        if ready and ready[0][1] & select.POLLOUT and self.channel.pending:
            self.flush()
        return list(self.messages())

    def lost(self) -> None:
        """The master is gone: stop watching the channel (its EOF would wake every poll)."""
        if not self.gone:
            self.gone = True
            try:
                self.epoll.unregister(self.channel.fileno())
            except OSError:
                pass
        self.on_lost()
