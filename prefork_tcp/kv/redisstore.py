"""``driver = "redis"``: a storage shared by every machine pointing at the same Redis.

redis-py (with hiredis as its parser when installed), one connection pool per process.
Every key is the storage's ``prefix`` followed by the key, so several storages (and
other applications) can share one database: ``clear`` deletes only the prefix's keys,
with SCAN and UNLINK, never FLUSHDB.  ``incr`` is INCRBY, TTLs are PX/PEXPIRE in
milliseconds (a TTL is rounded up to the next millisecond).

Outages: no retries inside an operation, which fails within ``timeout`` with
``StorageError``; the next operation connects again, so the storage recovers by itself
once Redis is back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..values import redacted
from . import Storage, StorageError, as_bytes, check_by, check_key, check_ttl, key_list

#: Keys per SCAN step and per UNLINK in ``clear``.
CLEAR_BATCH = 500


class RedisStorage(Storage):
    """A storage in the Redis at ``addr``, its keys under ``prefix``; see the module docstring."""

    def __init__(self, name: str, addr: str, prefix: str, timeout: float) -> None:
        super().__init__(name)
        self.addr = addr
        self.prefix = prefix
        self.timeout = timeout
        self._client: redis.Redis | None = None

    def _error(self, exc: Exception) -> StorageError:
        return StorageError(f"storage {self.name!r} (redis {redacted(self.addr)}): {exc}")  # never the password

    def _redis(self) -> redis.Redis:
        if self._client is None:
            try:
                self._client = redis.Redis.from_url(
                    self.addr,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=0,
                )
            except (ValueError, TypeError) as exc:  # an address the config check let through
                raise self._error(exc) from None
        return self._client

    def _ms(self, ttl: float) -> int:
        return max(1, math.ceil(ttl * 1000))

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        try:
            value = self._redis().get(self.prefix + check_key(key))
        except redis.RedisError as exc:
            raise self._error(exc) from None
        return default if value is None else value  # type: ignore[return-value]

    def set(self, key: str, value: bytes | str, ttl: float | None = None) -> None:
        ttl = check_ttl(ttl)
        try:
            self._redis().set(self.prefix + check_key(key), as_bytes(value), px=None if ttl is None else self._ms(ttl))
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def has(self, key: str) -> bool:
        try:
            return bool(self._redis().exists(self.prefix + check_key(key)))
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def mget(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = key_list(keys)
        if not wanted:
            return {}
        prefix = self.prefix
        try:
            values = self._redis().mget([prefix + key for key in wanted])
        except redis.RedisError as exc:
            raise self._error(exc) from None
        return {key: value for key, value in zip(wanted, values, strict=True) if value is not None}  # type: ignore[misc]

    def expire(self, keys: Iterable[str], ttl: float | None) -> None:
        ttl = check_ttl(ttl)
        wanted = key_list(keys)
        if not wanted:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for key in wanted:
                if ttl is None:
                    pipe.persist(self.prefix + key)
                else:
                    pipe.pexpire(self.prefix + key, self._ms(ttl))
            pipe.execute()
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def ttl(self, key: str) -> float | None:
        try:
            ms: int = self._redis().pttl(self.prefix + check_key(key))
        except redis.RedisError as exc:
            raise self._error(exc) from None
        if ms == -2:
            raise KeyError(key)
        return None if ms == -1 else ms / 1000

    def delete(self, *keys: str) -> int:
        wanted = key_list(keys)
        if not wanted:
            return 0
        try:
            return int(self._redis().delete(*[self.prefix + key for key in wanted]))
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def clear(self) -> None:
        pattern = _glob_escape(self.prefix) + "*"
        try:
            client = self._redis()
            batch: list[bytes] = []
            for found in client.scan_iter(match=pattern, count=CLEAR_BATCH):
                batch.append(found)
                if len(batch) == CLEAR_BATCH:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def incr(self, key: str, by: int = 1) -> int:
        try:
            return int(self._redis().incrby(self.prefix + check_key(key), check_by(by)))
        except redis.ResponseError as exc:
            if "integer" in str(exc) or "overflow" in str(exc):  # not an integer, or it would overflow
                raise ValueError(f"storage {self.name!r}: {key!r} does not hold an integer, or adding {by} leaves 64 bits") from None
            raise self._error(exc) from None
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def probe(self) -> None:
        try:
            self._redis().ping()
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def forget_connection(self) -> None:
        self._client = None  # the parent's sockets: never used, nor closed, here

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _glob_escape(text: str) -> str:
    """``text`` as a SCAN MATCH pattern that matches only itself."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
