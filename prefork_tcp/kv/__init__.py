"""Key-value storages every worker shares (SPEC §1 and §8, ``[kv.NAME]``).

A connection's own state lives in ``TcpWorker.session`` and moves with it; what
connections share (counters, rate limits, presence, a message waiting for a device)
lives in a named storage::

    from prefork_tcp import kv

    seen = kv.storage("local").incr(f"messages:{request.remote_address}")

``driver = "sqlite"`` (the default) is one file shared by the workers of one machine;
``driver = "redis"`` is shared by every machine that points at the same Redis.  Both have
the same operations and the same semantics (``Storage``); ``incr`` is atomic across
every process sharing the storage.  A storage that cannot be reached raises
``StorageError`` naming it and the cause; it reconnects by itself on a later call.

Storages are opened on first use in each process, and again in a forked child: an
object made before a fork (``--preload``) works in every worker.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import KvConfig

__all__ = ["NoSuchStorage", "Storage", "StorageError", "storage"]


class StorageError(Exception):
    """A storage could not be reached or used; the message names the storage and the cause."""


class NoSuchStorage(StorageError, KeyError):
    """``storage(name)`` of a name the configuration has no ``[kv.NAME]`` for (a ``KeyError`` too)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Storage(ABC):
    """A named key-value storage. Keys are ``str``, values ``bytes`` (a ``str`` is stored
    UTF-8 encoded), TTLs are seconds (``None``: no expiry)."""

    def __init__(self, name: str) -> None:
        self.name = name
        _open_storages.add(self)

    @abstractmethod
    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """The value of ``key``, or ``default`` when it has none (or it expired)."""

    @abstractmethod
    def set(self, key: str, value: bytes | str, ttl: float | None = None) -> None:
        """Store ``value`` at ``key``, expiring after ``ttl`` seconds (``None``: never); replaces any TTL it had."""

    @abstractmethod
    def has(self, key: str) -> bool:
        """Whether ``key`` has a value."""

    @abstractmethod
    def mget(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of those of ``keys`` that have one."""

    @abstractmethod
    def expire(self, keys: Iterable[str], ttl: float | None) -> None:
        """Make each of ``keys`` that has a value expire after ``ttl`` seconds (``None``: never)."""

    @abstractmethod
    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, ``None`` if it never does; ``KeyError`` if it has no value."""

    @abstractmethod
    def delete(self, *keys: str) -> int:
        """Remove ``keys``; return how many had a value."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every key of this storage (and only of this storage)."""

    @abstractmethod
    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key`` (a missing key is 0) and return the result,
        atomically for every process sharing the storage; a TTL is kept. ``ValueError``
        if the value is not an integer or the result would not fit in 64 bits."""

    @abstractmethod
    def probe(self) -> None:
        """Connect and check the storage can be used (without changing it); raises StorageError."""

    @abstractmethod
    def forget_connection(self) -> None:
        """Drop the connection without closing what it shares with a parent (after a fork)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; the next call opens a new one."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# -- argument checks shared by the drivers ---------------------------------------------------


def check_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"a key is a str, got {type(key).__name__}")
    return key


def key_list(keys: Iterable[str]) -> list[str]:
    """``keys`` as a list, each checked; one ``str`` is refused (it would be its characters)."""
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys are an iterable of str, not one str")
    wanted = keys if type(keys) is list else list(keys)  # only read, never kept
    if wanted and set(map(type, wanted)) != _ONLY_STR:
        for key in wanted:
            check_key(key)
    return wanted


_ONLY_STR = {str}


def as_bytes(value: object) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a value is bytes or str, got {type(value).__name__}")


def check_ttl(ttl: object) -> float | None:
    """A TTL in seconds: a positive finite number, or None."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL:
        raise ValueError(f"a ttl is a positive number of seconds up to {MAX_TTL:g} (100 years) or None, got {ttl!r}")
    return float(ttl)


#: The longest TTL (100 years): both drivers can hold it.
MAX_TTL = 100 * 365.25 * 86400


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def check_by(by: object) -> int:
    if isinstance(by, bool) or not isinstance(by, int) or not INT64_MIN <= by <= INT64_MAX:
        raise ValueError(f"an increment is a 64-bit integer, got {by!r}")
    return by


# -- the storages of this process ---------------------------------------------------------------

_configs: dict[str, KvConfig] = {}
_storages: dict[str, Storage] = {}
_lock = threading.Lock()
_open_storages: weakref.WeakSet[Storage] = weakref.WeakSet()


def configure(configs: Iterable[KvConfig]) -> None:
    """Use the ``[kv.NAME]`` storages of a configuration (the server does this before the
    application is imported, and again on a reload)."""
    with _lock:
        old = dict(_configs)
        _configs.clear()
        _configs.update({config.name: config for config in configs})
        for name in [name for name in _storages if old.get(name) != _configs.get(name)]:
            _storages.pop(name).close()  # gone or changed: the next storage() opens the new one


def storage(name: str) -> Storage:
    """The storage configured as ``[kv.NAME]``; ``NoSuchStorage`` (a ``StorageError`` and a
    ``KeyError``) if there is none of that name."""
    opened = _storages.get(name)
    if opened is not None:
        return opened
    with _lock:
        if name not in _storages:
            config = _configs.get(name)
            if config is None:
                known = ", ".join(sorted(_configs)) or "none"
                raise NoSuchStorage(f"no storage {name!r}: add a [kv.{name}] table to the config (configured: {known})")
            _storages[name] = open_storage(config)
        return _storages[name]


def open_storage(config: KvConfig) -> Storage:
    """A new storage object for ``config`` (it connects on first use)."""
    if config.driver == "redis":
        from .redisstore import RedisStorage

        return RedisStorage(config.name, config.addr, config.prefix, config.timeout)
    from .sqlitestore import SqliteStorage

    return SqliteStorage(config.name, config.file, config.timeout)


def check(configs: Iterable[KvConfig], unless_in: Iterable[KvConfig] = ()) -> None:
    """Open each storage once and close it, but for those configured the same in
    ``unless_in`` (a reload checks only what it changes); raises StorageError naming the
    first that cannot be opened."""
    known = set(unless_in)
    for config in configs:
        if config in known:
            continue
        probe = open_storage(config)
        try:
            probe.probe()
        except StorageError as exc:
            raise StorageError(f"cannot open {exc}") from None
        finally:
            probe.close()
            _open_storages.discard(probe)


def _after_fork_in_child() -> None:
    for opened in list(_open_storages):
        opened.forget_connection()


os.register_at_fork(after_in_child=_after_fork_in_child)
