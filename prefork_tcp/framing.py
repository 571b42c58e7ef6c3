"""Splitting a connection's byte stream into messages. Pure: no sockets, no clock."""

from __future__ import annotations

from functools import cache
from typing import Any

try:
    import cython
except ImportError:  # plain Python without Cython installed
    from . import nocython as cython

if cython.compiled:
    from cython.cimports.prefork_tcp.cframing import cut

#: The read size a framer assumes when it is not told (the default ``read_buf_size``).
READ_SIZE = 64 * 1024
#: A server's framing when its config says nothing: ``delimiter`` and ``max_message_size``.
DEFAULT_DELIMITER = b"\r\n"
DEFAULT_MAX_SIZE = 1 << 20


class MessageTooLarge(Exception):
    """A message grew past the server's ``max_message_size`` without a delimiter."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes exceeds max_message_size {limit}")
        self.size = size
        self.limit = limit


class Framer:
    """Cuts a byte stream into messages that end with ``delimiter`` (kept in each message).

    ``feed()`` returns the messages completed by a chunk, in order; bytes after the last
    delimiter wait for the next chunk. Given a ``tag``, it returns each message as the
    tuple ``(tag, event, message)`` instead: the event loop's events, made in one go.
    The result never depends on how the stream was split into chunks, and the pending
    partial message never holds more than
    ``max_size + len(delimiter) - 1`` bytes: past that ``feed()`` raises
    ``MessageTooLarge``.  ``max_size`` counts the message without its delimiter.

    ``probe`` serves the worker loop's shortcut for a read that is exactly one message
    (``read.partition(probe)`` finds it once, at the end): it is the delimiter while that
    answer is the same as ``feed()``'s, and otherwise something longer than any read of
    ``read_size`` bytes, which no read contains. It is the delimiter when nothing is
    pending and no read can hold a message over ``max_size``.
    """

    __slots__ = ("_blocked", "_dlen", "_partial", "_shortcut", "delimiter", "max_size", "probe", "started")

    def __init__(self, delimiter: bytes, max_size: int, read_size: int = READ_SIZE) -> None:
        if not delimiter:
            raise ValueError("Framer needs a non-empty delimiter; use StreamFramer for none")
        self.delimiter = delimiter
        self.max_size = max_size
        self._dlen = len(delimiter)
        self._partial = bytearray()
        self._blocked = _longer_than(read_size)
        self._shortcut = delimiter if read_size <= max_size + self._dlen else self._blocked
        self.probe = self._shortcut
        #: How many unfinished messages were begun so far: the read timeout's clock tells
        #: one pending message from the next by it (``timeouts.expired``).
        self.started = 0

    def fresh(self) -> Framer:
        """A framer for a new connection: this one's delimiter and limits, nothing pending.
        (Cheaper than the constructor, which works the limits out; one per connection.)"""
        framer: Framer = Framer.__new__(Framer)  # compiled: C stores below
        framer.delimiter = self.delimiter
        framer.max_size = self.max_size
        framer._dlen = self._dlen
        framer._partial = bytearray()
        framer._blocked = self._blocked
        framer._shortcut = framer.probe = self._shortcut
        framer.started = 0
        return framer

    def feed(self, data: bytes, tag: object = None, event: object = None) -> list[Any]:
        """Return the messages that ``data`` completes, each ending with the delimiter
        (each as ``(tag, event, message)`` when ``tag`` is not None)."""
        continued = bool(self._partial)
        messages = self._feed(data, tag, event)
        if self._partial:
            self.probe = self._blocked
            if messages or not continued:
                self.started += 1
        else:
            self.probe = self._shortcut
        return messages

    def _feed(self, data: bytes, tag: object, event: object) -> list[Any]:
        delim = self.delimiter
        partial = self._partial
        if partial:
            # Only the seam can hold a delimiter that started in the old bytes.
            seam = max(0, len(partial) - self._dlen + 1)
            partial += data
            if partial.find(delim, seam) < 0:
                self._check_partial(len(partial))
                return []
            data = bytes(partial)
            partial.clear()
        elif not cython.compiled:  # (compiled, cut() below takes one whole message as it is)
            # Fast path for the common case of one whole message per read.
            first = data.find(delim)
            if first < 0:
                if data:
                    self._check_partial(len(data))
                    partial += data
                return []
            if first + self._dlen == len(data):
                if first > self.max_size:
                    raise MessageTooLarge(first, self.max_size)
                return [data] if tag is None else [(tag, event, data)]
        if cython.compiled:  # each message made once, delimiter included (cframing.pxd)
            messages: list[Any] = []
            longest: cython.Py_ssize_t = 0
            rest: cython.Py_ssize_t = cut(data, delim, messages, cython.address(longest), tag, event)
            if longest > self.max_size:
                raise MessageTooLarge(longest, self.max_size)
            if rest < len(data):
                self._check_partial(len(data) - rest)
                partial += data[rest:]
            return messages
        else:  # split() makes each message without its delimiter, + makes it again
            parts = data.split(delim)
            tail = parts.pop()
            if len(data) > self.max_size:
                longest = max(map(len, parts))
                if longest > self.max_size:
                    raise MessageTooLarge(longest, self.max_size)
            if tail:
                self._check_partial(len(tail))
                partial += tail
            if tag is None:
                return [part + delim for part in parts]
            return [(tag, event, part + delim) for part in parts]

    def take_partial(self) -> bytes:
        """Return and forget the bytes of the unfinished message (at end of stream)."""
        if not self._partial:  # the usual end: nothing unfinished
            self.probe = self._shortcut
            return b""
        rest = bytes(self._partial)
        self._partial.clear()
        self.probe = self._shortcut
        return rest

    def peek_partial(self) -> bytes:
        """Return the bytes of the unfinished message, keeping them."""
        return bytes(self._partial)

    @property
    def pending(self) -> int:
        """Number of bytes waiting for a delimiter."""
        return len(self._partial)

    def _check_partial(self, size: int) -> None:
        # A partial may end with the first bytes of a delimiter, which do not count.
        if size > self.max_size + self._dlen - 1:
            raise MessageTooLarge(size, self.max_size)


class StreamFramer:
    """Stream mode (``delimiter = ""``): every chunk read is one message."""

    __slots__ = ()

    delimiter = b""
    pending = 0
    started = 0
    #: The loop's whole-message shortcut partitions reads at this. Here every read is one
    #: message whatever the shortcut finds, so any non-empty value does.
    probe = b"\n"

    def feed(self, data: bytes, tag: object = None, event: object = None) -> list[Any]:
        """Return ``data`` as one message (nothing for an empty chunk), as ``Framer.feed``."""
        if not data:
            return []
        return [data] if tag is None else [(tag, event, data)]

    def take_partial(self) -> bytes:
        """Stream mode never holds bytes back."""
        return b""

    def fresh(self) -> StreamFramer:
        """The framer for a new connection: this one, which holds nothing of any."""
        return self

    peek_partial = take_partial


@cache
def _longer_than(read_size: int) -> bytes:
    """A probe no read of up to ``read_size`` bytes contains (one per read size, shared)."""
    return bytes(read_size + 1)


def make_framer(delimiter: bytes, max_size: int, read_size: int = READ_SIZE) -> Framer | StreamFramer:
    """Return the framer for a server's ``delimiter`` (empty means stream mode)."""
    return Framer(delimiter, max_size, read_size) if delimiter else StreamFramer()
