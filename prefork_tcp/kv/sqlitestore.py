"""``driver = "sqlite"``: one database file shared by every worker of the machine.

The standard library's sqlite3, in WAL mode (readers never wait for the writer) with a
busy timeout (a writer waits that long for the write lock, then ``StorageError``).
Every operation (on up to ``CHUNK`` keys) is one statement in autocommit mode, so each
is atomic; ``incr`` is a single UPSERT that checks the old value is an integer and
cannot overflow.

Expiry times are wall-clock seconds (every process of the machine shares the clock).
A read never returns an expired value; expired rows are deleted by a sweep that each
process runs at most every ``SWEEP_EVERY`` seconds, with its next write (a read never
takes the write lock).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterable

from . import INT64_MAX, INT64_MIN, Storage, StorageError, as_bytes, check_by, check_key, check_ttl, key_list

#: How often one process deletes the expired rows (with its next write after that).
SWEEP_EVERY = 30.0
#: Keys per statement in mget, expire and delete (SQLite's limit on parameters is higher).
CHUNK = 500
#: RETURNING (in incr and delete) came with SQLite 3.35.
MIN_SQLITE = (3, 35, 0)

_LIVE = "(expires IS NULL OR expires > ?)"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL",
)
_GET = f"SELECT value FROM kv WHERE key = ? AND {_LIVE}"
_HAS = f"SELECT 1 FROM kv WHERE key = ? AND {_LIVE}"
_TTL = f"SELECT expires FROM kv WHERE key = ? AND {_LIVE}"
_SET = "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)"
# One statement: a missing or expired key starts from 0 without a TTL; a live one keeps
# its TTL, and is updated only if it holds a canonical 64-bit integer that ``by`` does
# not push out of range (else no row comes back).
_INCR = """
INSERT INTO kv (key, value, expires) VALUES (:key, CAST(:by AS BLOB), NULL)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN expires <= :now THEN CAST(:by AS BLOB) ELSE CAST(CAST(value AS INTEGER) + :by AS BLOB) END,
    expires = CASE WHEN expires <= :now THEN NULL ELSE expires END
WHERE expires <= :now OR (
    CAST(CAST(value AS INTEGER) AS BLOB) = value
    AND CASE WHEN :by >= 0 THEN CAST(value AS INTEGER) <= 9223372036854775807 - :by
             ELSE CAST(value AS INTEGER) >= -9223372036854775808 - :by END)
RETURNING value
"""
_SWEEP = "DELETE FROM kv WHERE expires <= ?"
_MGET = "SELECT key, value FROM kv WHERE key IN"


class SqliteStorage(Storage):
    """A storage in the SQLite file ``file``; see the module docstring."""

    def __init__(self, name: str, file: str, timeout: float) -> None:
        super().__init__(name)
        self.file = file
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._next_sweep = 0.0

    def _error(self, exc: Exception) -> StorageError:
        return StorageError(f"storage {self.name!r} (sqlite {self.file}): {exc}")

    def _connect(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            version = ".".join(map(str, MIN_SQLITE))
            raise StorageError(
                f"storage {self.name!r}: needs SQLite {version} or newer (RETURNING), this Python has {sqlite3.sqlite_version}"
            )
        deadline = time.monotonic() + self.timeout
        while True:
            left = max(0.001, deadline - time.monotonic())  # all attempts together wait at most ``timeout``
            try:
                conn = sqlite3.connect(self.file, timeout=left, isolation_level=None, check_same_thread=False)
                try:
                    _prepare(conn)
                except BaseException:
                    conn.close()
                    raise
            except sqlite3.OperationalError as exc:
                # Processes opening a new file at once: switching it to WAL, or creating
                # the table, can be refused at once instead of waiting for the lock.
                if "locked" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise self._error(exc) from None
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")  # each operation's own wait
            self._conn = conn
            return conn

    def _db(self, now: float, writing: bool = True) -> sqlite3.Connection:
        """The connection (opened on first use); for a write, after the expired rows are
        swept if it is time (a read never takes the write lock). Each operation below checks
        its arguments inline and calls this once: the layer's whole cost over sqlite3
        (scripts/kv_bench.py)."""
        conn = self._conn or self._connect()
        if writing and now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            try:
                conn.execute(_SWEEP, (now,))
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        return conn

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        if type(key) is not str:
            check_key(key)
        now = time.time()
        try:
            row = self._db(now, writing=False).execute(_GET, (key, now)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return default if row is None else row[0]

    def set(self, key: str, value: bytes | str, ttl: float | None = None) -> None:
        if type(key) is not str:
            check_key(key)
        if type(value) is not bytes:
            value = as_bytes(value)
        now = time.time()
        expires = None if ttl is None else now + check_ttl(ttl)  # type: ignore[operator]  # a number, once checked
        try:
            self._db(now).execute(_SET, (key, value, expires))
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def has(self, key: str) -> bool:
        if type(key) is not str:
            check_key(key)
        now = time.time()
        try:
            return self._db(now, writing=False).execute(_HAS, (key, now)).fetchone() is not None
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def mget(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = key_list(keys)
        now = time.time()
        try:
            conn = self._db(now, writing=False)
            if len(wanted) <= CHUNK:  # one statement
                return dict(conn.execute(_statement(_MGET, len(wanted)), (*wanted, now))) if wanted else {}
            found: dict[str, bytes] = {}
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                found.update(conn.execute(_statement(_MGET, len(chunk)), (*chunk, now)))
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return found

    def expire(self, keys: Iterable[str], ttl: float | None) -> None:
        wanted = key_list(keys)
        ttl = check_ttl(ttl)
        now = time.time()
        expires = None if ttl is None else now + ttl
        try:
            conn = self._db(now)
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                conn.execute(_statement("UPDATE kv SET expires = ? WHERE key IN", len(chunk)), (expires, *chunk, now))
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def ttl(self, key: str) -> float | None:
        now = time.time()
        try:
            row = self._db(now, writing=False).execute(_TTL, (check_key(key), now)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if row is None:
            raise KeyError(key)
        return None if row[0] is None else max(0.0, row[0] - now)

    def delete(self, *keys: str) -> int:
        wanted = key_list(keys)
        now = time.time()
        deleted = 0
        try:
            conn = self._db(now)
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                # One statement: expired rows go too, and only live ones count.
                gone = conn.execute(_statement("DELETE FROM kv WHERE key IN", len(chunk), returning=True), chunk).fetchall()
                deleted += sum(1 for (expires,) in gone if expires is None or expires > now)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return deleted

    def clear(self) -> None:
        try:
            self._db(time.time()).execute("DELETE FROM kv")
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def incr(self, key: str, by: int = 1) -> int:
        if type(key) is not str:
            check_key(key)
        if type(by) is not int or not INT64_MIN <= by <= INT64_MAX:
            check_by(by)
        now = time.time()
        try:
            row = self._db(now).execute(_INCR, {"key": key, "by": by, "now": now}).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if row is None:
            raise ValueError(f"storage {self.name!r}: {key!r} does not hold an integer, or adding {by} leaves 64 bits")
        return int(row[0])

    def probe(self) -> None:
        try:
            (self._conn or self._connect()).execute("SELECT COUNT(*) FROM kv WHERE key = ''").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def forget_connection(self) -> None:
        # The parent's connection: never used here, and never closed either (SQLite must
        # not carry a connection across a fork), so it is kept until this process exits.
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _prepare(conn: sqlite3.Connection) -> None:
    """WAL mode (once per file: it stays), and the table."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    made = conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE tbl_name = 'kv'"
        " AND ((type = 'table' AND name = 'kv') OR (type = 'index' AND name = 'kv_expires'))"
    ).fetchone()[0]
    if made != 2:
        for statement in _SCHEMA:
            conn.execute(statement)


@functools.lru_cache(maxsize=64)
def _statement(head: str, count: int, returning: bool = False) -> str:
    """``head`` with ``count`` keys to match: those live only, unless ``returning`` (their expiry)."""
    return f"{head} ({','.join('?' * count)})" + (" RETURNING expires" if returning else f" AND {_LIVE}")


#: Connections a forked child inherited: kept open, untouched, for the process's life.
_INHERITED: list[sqlite3.Connection] = []
