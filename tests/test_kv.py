"""``prefork_tcp.kv``: one suite of semantics run against both drivers, SQLite (a real file)
and Redis (a real redis-server), plus what each driver must do on its own."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import time

import pytest
import redis
from harness import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork_tcp import kv
from prefork_tcp.config import KvConfig
from prefork_tcp.kv import StorageError, open_storage
from prefork_tcp.kv.sqlitestore import SqliteStorage

_prefixes = itertools.count()


def make(driver: str, tmp_path, redis_url: str = "", name: str = "test") -> kv.Storage:
    if driver == "sqlite":
        return open_storage(KvConfig(name, "sqlite", file=str(tmp_path / f"{name}.db"), timeout=2.0))
    return open_storage(KvConfig(name, "redis", addr=redis_url, prefix=f"test:{os.getpid()}:{next(_prefixes)}:", timeout=2.0))


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    storage = make(request.param, tmp_path, url)
    yield storage
    storage.close()


def wait_expired(storage: kv.Storage, key: str) -> None:
    deadline = time.monotonic() + 10
    while storage.has(key):
        assert time.monotonic() < deadline, f"{key} did not expire"
        time.sleep(0.01)


# -- values ------------------------------------------------------------------------------------------


def test_get_set_has_and_default(store):
    assert store.get("k") is None and store.get("k", b"dflt") == b"dflt" and not store.has("k")
    store.set("k", b"v\x00\xff")
    assert store.get("k") == b"v\x00\xff" and store.has("k")
    store.set("k", "naïve")  # str: UTF-8
    assert store.get("k") == "naïve".encode()
    store.set("k", bytearray(b"ba"))
    assert store.get("k") == b"ba"
    store.set("", b"empty key")
    assert store.get("") == b"empty key"
    store.set("big", b"x" * (1 << 20))
    assert store.get("big") == b"x" * (1 << 20)


@pytest.mark.parametrize("call", [lambda s: s.get(1), lambda s: s.set(b"k", b"v"), lambda s: s.set("k", 5), lambda s: s.mget("ab")])
def test_wrong_types_are_type_errors(store, call):
    with pytest.raises(TypeError):
        call(store)


def test_mget_returns_only_the_keys_found(store):
    store.set("a", b"1")
    store.set("b", b"2")
    assert store.mget(["a", "b", "missing"]) == {"a": b"1", "b": b"2"}
    assert store.mget([]) == {}
    keys = [f"many:{i}" for i in range(1200)]  # past a statement's worth of keys
    for key in keys[::2]:
        store.set(key, key)
    assert store.mget(iter(keys)) == {key: key.encode() for key in keys[::2]}
    assert store.delete(*keys) == 600


def test_delete_counts_what_it_removed(store):
    store.set("a", b"1")
    store.set("b", b"2")
    assert store.delete("a", "missing") == 1
    assert store.delete() == 0
    assert store.mget(["a", "b"]) == {"b": b"2"}


def test_clear_removes_this_storage_and_no_other(store, tmp_path, request):
    if isinstance(store, SqliteStorage):  # another file
        other = make("sqlite", tmp_path, name="other")
    else:  # another prefix in the same database
        other = make("redis", tmp_path, request.getfixturevalue("redis_server").url)
    try:
        for key in ("a", "b*", "c?[x]"):
            store.set(key, b"1")
        other.set("a", b"other")
        store.clear()
        assert store.mget(["a", "b*", "c?[x]"]) == {}
        assert other.get("a") == b"other"
    finally:
        other.clear()
        other.close()


# -- TTLs --------------------------------------------------------------------------------------------


def test_a_value_expires_after_its_ttl(store):
    store.set("k", b"v", ttl=0.3)
    assert 0 < store.ttl("k") <= 0.3
    assert store.get("k") == b"v"
    wait_expired(store, "k")
    assert store.get("k") is None and store.mget(["k"]) == {}
    with pytest.raises(KeyError):
        store.ttl("k")
    assert store.delete("k") == 0


def test_no_ttl_is_none_and_set_replaces_a_ttl(store):
    store.set("k", b"v")
    assert store.ttl("k") is None
    store.set("k", b"v", ttl=100)
    assert 99 < store.ttl("k") <= 100
    store.set("k", b"w")
    assert store.ttl("k") is None
    with pytest.raises(KeyError):
        store.ttl("missing")


def test_expire_sets_and_removes_ttls_of_existing_keys_only(store):
    store.set("a", b"1")
    store.set("b", b"2", ttl=100)
    store.expire(["a", "b", "missing"], 50)
    assert 49 < store.ttl("a") <= 50 and 49 < store.ttl("b") <= 50
    assert not store.has("missing")
    store.expire(["a"], None)
    assert store.ttl("a") is None
    store.expire(["b"], 0.2)
    wait_expired(store, "b")
    store.expire([], 1)


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, True, "5", 1e10])
def test_a_ttl_that_is_not_a_positive_number_is_refused(store, ttl):
    with pytest.raises(ValueError):
        store.set("k", b"v", ttl=ttl)
    with pytest.raises(ValueError):
        store.expire(["k"], ttl)
    assert not store.has("k")


# -- incr ----------------------------------------------------------------------------------------------


def test_incr_starts_at_zero_and_adds(store):
    assert store.incr("n") == 1
    assert store.incr("n", 10) == 11
    assert store.incr("n", -20) == -9
    assert store.get("n") == b"-9"
    store.set("m", "41")
    assert store.incr("m") == 42


def test_incr_keeps_a_ttl_and_an_expired_value_starts_again(store):
    store.set("n", b"5", ttl=100)
    assert store.incr("n") == 6 and 99 < store.ttl("n") <= 100
    store.set("e", b"5", ttl=0.2)
    wait_expired(store, "e")
    assert store.incr("e") == 1 and store.ttl("e") is None


@pytest.mark.parametrize("value", [b"abc", b"1.5", b"", b" 1", b"9223372036854775808"])
def test_incr_of_a_value_that_is_not_an_integer_is_a_value_error_and_changes_nothing(store, value):
    store.set("x", value)
    with pytest.raises(ValueError):
        store.incr("x")
    assert store.get("x") == value


@pytest.mark.parametrize("start, by", [(2**63 - 1, 1), (-(2**63), -1), (2**62, 2**62)])
def test_incr_that_leaves_64_bits_is_a_value_error_and_changes_nothing(store, start, by):
    store.set("x", str(start))
    with pytest.raises(ValueError):
        store.incr("x", by)
    assert store.get("x") == str(start).encode()
    assert store.incr("x", -by) == start - by  # the other way fits


@pytest.mark.parametrize("by", [1.5, True, 2**63, "1"])
def test_an_increment_that_is_not_a_64_bit_integer_is_refused(store, by):
    with pytest.raises(ValueError):
        store.incr("x", by)
    assert not store.has("x")


def _hammer(args: tuple[str, str, str, int]) -> int:
    driver, where, prefix, count = args
    if driver == "sqlite":
        storage = open_storage(KvConfig("test", "sqlite", file=where, timeout=10.0))
    else:
        storage = open_storage(KvConfig("test", "redis", addr=where, prefix=prefix, timeout=10.0))
    last = 0
    for _ in range(count):
        last = storage.incr("counter")
    storage.close()
    return last


def test_incr_is_atomic_across_processes(store):
    driver = "sqlite" if isinstance(store, SqliteStorage) else "redis"
    where = store.file if isinstance(store, SqliteStorage) else store.addr  # type: ignore[attr-defined]
    prefix = getattr(store, "prefix", "")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        lasts = pool.map(_hammer, [(driver, where, prefix, 500)] * 8)
    assert store.get("counter") == b"4000"
    assert max(lasts) == 4000 and len(set(lasts)) == 8  # each process saw its own last value


# -- the same model on both drivers ----------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.binary(max_size=8)),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("delete"), st.lists(KEYS, max_size=3)),
        st.tuples(st.just("incr"), KEYS, st.integers(-1000, 1000)),
        st.tuples(st.just("mget"), st.lists(KEYS, max_size=4)),
        st.tuples(st.just("has"), KEYS),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPS)
def test_both_drivers_behave_like_a_dict(store, ops):
    store.clear()
    model: dict[str, bytes] = {}
    for op in ops:
        if op[0] == "set":
            store.set(op[1], op[2])
            model[op[1]] = op[2]
        elif op[0] == "get":
            assert store.get(op[1]) == model.get(op[1])
        elif op[0] == "has":
            assert store.has(op[1]) == (op[1] in model)
        elif op[0] == "delete":
            assert store.delete(*op[1]) == len(set(op[1]) & set(model))
            for key in op[1]:
                model.pop(key, None)
        elif op[0] == "mget":
            assert store.mget(op[1]) == {key: model[key] for key in op[1] if key in model}
        else:
            old = model.get(op[1], b"0")
            try:
                expected = int(old) + op[2]
                canonical = str(int(old)).encode() == old
            except ValueError:
                canonical = False
            if canonical:
                assert store.incr(op[1], op[2]) == expected
                model[op[1]] = str(expected).encode()
            else:
                with pytest.raises(ValueError):
                    store.incr(op[1], op[2])


# -- each driver on its own ---------------------------------------------------------------------------


def test_sqlite_shares_one_file_in_wal_mode_and_sweeps_expired_rows(tmp_path, monkeypatch):
    from prefork_tcp.kv import sqlitestore

    first, second = make("sqlite", tmp_path), make("sqlite", tmp_path)
    first.set("k", b"v")
    assert second.get("k") == b"v"
    conn = first._conn  # type: ignore[attr-defined]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    first.set("gone", b"x", ttl=0.05)
    wait_expired(first, "gone")
    assert conn.execute("SELECT COUNT(*) FROM kv WHERE key = 'gone'").fetchone()[0] == 1  # hidden, not deleted yet
    monkeypatch.setattr(sqlitestore, "SWEEP_EVERY", 0.0)
    second._next_sweep = 0.0  # type: ignore[attr-defined]
    assert second.has("k")  # a read never sweeps (it would need the write lock)
    assert conn.execute("SELECT COUNT(*) FROM kv WHERE key = 'gone'").fetchone()[0] == 1
    second.set("other", b"x")  # the next write after SWEEP_EVERY sweeps
    assert conn.execute("SELECT COUNT(*) FROM kv WHERE key = 'gone'").fetchone()[0] == 0
    first.close()
    second.close()


def test_sqlite_older_than_3_35_is_a_clear_storage_error(tmp_path, monkeypatch):
    from prefork_tcp.kv import sqlitestore

    monkeypatch.setattr(sqlitestore.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlitestore.sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(StorageError, match=r"storage .test.: needs SQLite 3.35.0 or newer.*, this Python has 3.31.1"):
        make("sqlite", tmp_path).get("k")


def test_sqlite_errors_name_the_storage_and_the_cause(tmp_path):
    missing = open_storage(KvConfig("orders", "sqlite", file=str(tmp_path / "no" / "such" / "dir.db"), timeout=1.0))
    with pytest.raises(StorageError, match=r"storage 'orders' \(sqlite .*dir.db\): unable to open database file"):
        missing.get("k")
    with pytest.raises(StorageError, match="cannot open storage 'orders'"):
        kv.check([KvConfig("orders", "sqlite", file=str(tmp_path / "no" / "dir.db"), timeout=1.0)])
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="file is not a database"):
        open_storage(KvConfig("junk", "sqlite", file=str(garbage), timeout=1.0)).set("k", b"v")


def test_sqlite_a_writer_waits_for_the_lock_up_to_the_timeout(tmp_path):
    holder = make("sqlite", tmp_path)
    holder.set("k", b"v")
    waiting = open_storage(KvConfig("test", "sqlite", file=str(tmp_path / "test.db"), timeout=0.2))
    waiting.get("k")
    lock = holder._conn  # type: ignore[attr-defined]
    lock.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StorageError, match="database is locked"):
        waiting.set("k", b"w")
    assert 0.15 < time.monotonic() - started < 5
    assert waiting.get("k") == b"v"  # readers never wait (WAL)
    lock.execute("COMMIT")
    waiting.set("k", b"w")
    assert holder.get("k") == b"w"


def test_sqlite_opening_a_locked_new_file_waits_for_it_at_most_the_timeout(tmp_path):
    import sqlite3
    import threading

    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process setting the file up
    threading.Timer(0.2, lambda: holder.execute("COMMIT")).start()
    storage = open_storage(KvConfig("new", "sqlite", file=str(path), timeout=5.0))
    storage.set("k", b"v")  # waited, then made the table
    assert storage.get("k") == b"v"
    storage.close()
    holder.execute("BEGIN EXCLUSIVE")
    try:
        late = open_storage(KvConfig("late", "sqlite", file=str(path), timeout=0.3))
        started = time.monotonic()
        assert late.get("k") == b"v"  # WAL now: a reader does not wait for the writer
        with pytest.raises(StorageError, match="locked"):
            late.set("k", b"w")  # a writer waits for the lock, at most the timeout
        assert time.monotonic() - started < 3.0
    finally:
        holder.execute("COMMIT")
        holder.close()


def test_redis_keys_carry_the_prefix_and_clear_never_touches_other_keys(redis_server, tmp_path):
    raw = redis.Redis.from_url(redis_server.url)
    raw.set("someone-else", b"keep")
    storage = open_storage(KvConfig("orders", "redis", addr=redis_server.url, prefix="shop:orders:", timeout=2.0))
    storage.set("1", b"x")
    assert raw.get("shop:orders:1") == b"x"
    raw.set("shop:orders-archive:1", b"keep too")  # shares the text, not the prefix
    storage.clear()
    assert raw.get("shop:orders:1") is None and raw.get("someone-else") == b"keep" and raw.get("shop:orders-archive:1") == b"keep too"
    raw.delete("someone-else", "shop:orders-archive:1")


def test_redis_ttls_are_milliseconds_rounded_up(redis_server):
    storage = open_storage(KvConfig("t", "redis", addr=redis_server.url, prefix="ttl-test:", timeout=2.0))
    storage.set("k", b"v", ttl=0.0001)  # less than a millisecond: one millisecond
    wait_expired(storage, "k")
    storage.set("k", b"v", ttl=10.0004)
    assert 9.9 < storage.ttl("k") <= 10.001
    assert (storage._ms(10.0004), storage._ms(0.0001), storage._ms(2.5)) == (10001, 1, 2500)  # type: ignore[attr-defined]
    storage.clear()


def test_redis_outage_is_a_storage_error_and_the_storage_recovers_by_itself(redis_server):
    storage = open_storage(KvConfig("cache", "redis", addr=redis_server.url, prefix="outage:", timeout=1.0))
    storage.set("k", b"v")
    redis_server.stop()
    try:
        started = time.monotonic()
        for call in (lambda: storage.get("k"), lambda: storage.incr("n"), lambda: storage.set("k", b"w"), storage.clear):
            with pytest.raises(StorageError, match=rf"storage 'cache' \(redis 127.0.0.1:{redis_server.port}|redis://127"):
                call()
        assert time.monotonic() - started < 8  # each fails within its timeout
    finally:
        redis_server.start()
    assert storage.incr("n") == 1  # no persistence: a fresh server; the same object reconnects
    storage.clear()


@pytest.mark.parametrize("userinfo", [":hunter2@", "app:hunter2@", ":hun@ter2@"])
def test_redis_errors_never_show_the_password(userinfo):
    port = free_port()
    storage = open_storage(KvConfig("secret", "redis", addr=f"redis://{userinfo}127.0.0.1:{port}/0", prefix="p:", timeout=1.0))
    with pytest.raises(StorageError) as caught:
        storage.get("k")  # nothing listens there
    assert "hunter2" not in str(caught.value) and "ter2" not in str(caught.value)
    assert f"storage 'secret' (redis redis://127.0.0.1:{port}/0): " in str(caught.value)


def test_a_storage_made_before_a_fork_works_in_the_child(tmp_path, redis_server):
    for driver in ("sqlite", "redis"):
        storage = make(driver, tmp_path, redis_server.url, name=f"fork-{driver}")
        storage.set("before", b"1")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                storage.set("child", b"2")
                os._exit(0 if storage.get("before") == b"1" else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert storage.get("child") == b"2"  # and the parent's connection still works
        storage.clear()


def test_storage_by_name_from_the_configuration(tmp_path):
    kv.configure([KvConfig("local", "sqlite", file=str(tmp_path / "local.db"))])
    try:
        first = kv.storage("local")
        assert kv.storage("local") is first
        first.set("k", b"v")
        with pytest.raises(KeyError, match=r"no storage 'nope': add a \[kv.nope\] table to the config \(configured: local\)"):
            kv.storage("nope")
        with pytest.raises(kv.StorageError):  # both
            kv.storage("nope")
        kv.configure([KvConfig("local", "sqlite", file=str(tmp_path / "moved.db"))])  # a reload that moved it
        assert kv.storage("local") is not first and kv.storage("local").get("k") is None
    finally:
        kv.configure([])
