"""The vocabulary every part of prefork_tcp shares: ``TcpEvent``, ``TcpResponse``, ``Request``.

A leaf: it imports nothing of its own package, and the public API, the event loop and
the connection state all import it.

``Request`` is a tuple of five named fields, like a ``NamedTuple``, but built
differently: the worker makes one per event, and a ``NamedTuple``'s generated
``__new__`` (a Python function) sends every construction through the slow
``tuple.__new__`` path. ``Request`` keeps tuple's own C constructor;
``Request(event, body, ...)`` still works, through the metaclass, and the event loop
uses ``new_request(fields)``. The compiled core reads the fields in its own way
(``read_fields_with``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any


class TcpEvent(enum.Enum):
    """What happened on a connection (RoadRunner's wire strings)."""

    CONNECTED = "CONNECTED"
    DATA = "DATA"
    CLOSE = "CLOSE"


class TcpResponse(enum.Enum):
    """How a worker answers a request (RoadRunner's wire strings)."""

    RESPOND = "WRITE"  # write the body, keep reading
    RESPOND_CLOSE = "WRITECLOSE"  # write the body, then close gracefully
    READ = "CONTINUE"  # write nothing, keep reading
    CLOSE = "CLOSE"  # write nothing, close


try:  # the C descriptor NamedTuple uses for its fields
    from _collections import _tuplegetter
except ImportError:  # pragma: no cover - other interpreters

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


FIELDS = ("event", "body", "server", "connection_uuid", "remote_address")


class _RequestType(type):
    """``Request(event, body, server, connection_uuid, remote_address)`` builds a Request."""

    def __call__(cls, event: TcpEvent, body: bytes, server: str, connection_uuid: str, remote_address: str) -> Any:
        return tuple.__new__(cls, (event, body, server, connection_uuid, remote_address))  # type: ignore[arg-type]  # cls is Request


class Request(tuple, metaclass=_RequestType):
    """One event of one connection, as handed to the application. Immutable."""

    __slots__ = ()
    _fields = FIELDS
    __match_args__ = FIELDS

    event: TcpEvent = _tuplegetter(0, "CONNECTED, DATA or CLOSE")
    body: bytes = _tuplegetter(1, "the message, delimiter included (empty for CONNECTED and CLOSE)")
    server: str = _tuplegetter(2, "the name of the server the connection came in on")
    connection_uuid: str = _tuplegetter(3, "UUID4 text, one per connection, stable for its whole life")
    remote_address: str = _tuplegetter(4, '"ip:port", "[ipv6]:port", or for a unix socket the peer name or ""')

    def __repr__(self) -> str:
        return "Request(" + ", ".join(f"{name}={value!r}" for name, value in zip(FIELDS, self, strict=True)) + ")"

    def __getnewargs__(self) -> tuple[tuple[Any, ...]]:
        return (tuple(self),)  # pickle and copy rebuild it with tuple's constructor

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(FIELDS, self, strict=True))

    def _replace(self, **changes: Any) -> Request:
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise ValueError(f"Request has no field(s) {sorted(unknown)}")
        return Request(**{**self._asdict(), **changes})


def read_fields_with(descriptor: Callable[[type, str, int, str], Any]) -> None:
    """Read each field through ``descriptor(Request, name, index, doc)`` from now on.

    The compiled core gives a member descriptor, which reads the item at its fixed place
    in the tuple, in one load once the interpreter has specialized the access
    (``crequest.pxd``). A Request must then hold all five items: the type's call insists
    on five arguments, and ``Request.__new__`` (pickle's protocols 2 and up, and copy) on
    five fields. Only code that calls ``tuple.__new__(Request, ...)`` itself, or a
    crafted pickle, could make a shorter one.
    """
    for index, name in enumerate(FIELDS):
        setattr(Request, name, descriptor(Request, name, index, getattr(Request, name).__doc__))
    Request.__new__ = staticmethod(_new_request_checked)  # type: ignore[assignment]


def _new_request_checked(cls: type[Request], fields: Iterable[Any]) -> Request:
    fields = tuple(fields)
    if len(fields) != len(FIELDS):
        raise TypeError(f"a Request has {len(FIELDS)} fields, not {len(fields)}")
    return tuple.__new__(cls, fields)


#: ``new_request((event, body, server, connection_uuid, remote_address))``: type.__call__
#: on Request itself, so tuple's constructor runs without the metaclass's Python frame.
new_request = type.__call__.__get__(Request)
