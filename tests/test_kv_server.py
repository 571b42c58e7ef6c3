"""Storages through the real server (SPEC §1 and §8, ``[kv.NAME]``): applications in several
workers share exact counts on both drivers, a Redis outage is a clean error that heals by
itself, the examples work unchanged on SQLite and Redis, and bad storage config is one line."""

from __future__ import annotations

import threading

import pytest
from harness import Client, closed_by_server, manage, servers_config, start

from prefork_tcp import kv
from prefork_tcp.config import KvConfig


def storage_config(driver: str, tmp_path, redis_server=None, name: str = "shared") -> str:
    if driver == "sqlite":
        return f'[kv.{name}]\ndriver = "sqlite"\nfile = "{tmp_path / (name + ".db")}"\n'
    return f'[kv.{name}]\ndriver = "redis"\naddr = "{redis_server.url}"\nprefix = "{tmp_path.name}:{name}:"\n'


def direct(driver: str, tmp_path, redis_server=None, name: str = "shared") -> kv.Storage:
    """The same storage, opened by the test itself."""
    if driver == "sqlite":
        return kv.open_storage(KvConfig(name, "sqlite", file=str(tmp_path / (name + ".db"))))
    return kv.open_storage(KvConfig(name, "redis", addr=redis_server.url, prefix=f"{tmp_path.name}:{name}:"))


@pytest.fixture(params=["sqlite", "redis"])
def driver(request):
    if request.param == "redis":
        request.getfixturevalue("redis_server")
    return request.param


def redis_of(request, driver: str):
    return request.getfixturevalue("redis_server") if driver == "redis" else None


def ask_all(clients: list[Client], line: bytes) -> list[bytes]:
    """Send ``line`` on every client at once (a thread each); return the answers in order."""
    answers: list[bytes] = [b""] * len(clients)

    def ask(index: int) -> None:
        clients[index].send(line)
        answers[index] = clients[index].line()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def spread(server, count: int) -> tuple[list[Client], set[bytes]]:
    """At least ``count`` connections, over at least two workers (a few more if the first all went to one)."""
    clients: list[Client] = []
    pids: set[bytes] = set()
    while len(clients) < count or (len(pids) < 2 and len(clients) < 64):
        client = Client(server.address("a"))
        client.send(b"pid\r\n")
        pids.add(client.line())
        clients.append(client)
    return clients, pids


def test_incr_from_every_worker_at_once_is_exact(start_server, tmp_path, request, driver):
    redis_server = redis_of(request, driver)
    server = start(start_server, servers_config("a", app="kv_apps:main", extra=storage_config(driver, tmp_path, redis_server)), workers=4)
    clients, pids = spread(server, 8)
    assert len(pids) >= 2  # the increments really come from several processes
    answers = ask_all(clients, b"incr hits 300\r\n")
    total = 300 * len(clients)
    assert all(int(answer) <= total for answer in answers) and max(int(answer) for answer in answers) == total
    assert direct(driver, tmp_path, redis_server).get("hits") == str(total).encode()
    assert set(ask_all(clients, b"hammer own 200\r\n")) == {b"0\r\n"}  # set then get: each reads its own write
    for client in clients:
        client.close()


def test_a_redis_outage_is_a_clean_error_and_heals_by_itself(start_server, tmp_path, redis_server):
    extra = storage_config("redis", tmp_path, redis_server) + 'timeout = "500ms"\n'
    server = start(start_server, servers_config("a", app="kv_apps:main", extra=extra), workers=1)
    with Client(server.address("a")) as client:
        client.send(b"set k v\r\n")
        assert client.line() == b"ok\r\n"
        client.send(b"pid\r\n")
        pid = client.line()
        redis_server.stop()
        try:
            for command in (b"get k\r\n", b"incr n 1\r\n", b"set k w\r\n"):
                client.send(command)
                answer = client.line()
                assert answer.startswith(b"-ERR storage 'shared' (redis redis://127.0.0.1:"), answer
        finally:
            redis_server.start()
        client.send(b"incr n 1\r\n")
        assert client.line() == b"1\r\n"  # a fresh Redis (no persistence), reached again by the same worker
        client.send(b"pid\r\n")
        assert client.line() == pid
    assert "Traceback" not in server.log


@pytest.mark.parametrize("example", ["counter", "ratelimit"])
def test_the_storage_examples_work_unchanged_on_both_drivers(start_server, tmp_path, request, driver, example):
    redis_server = redis_of(request, driver)
    config = servers_config("a", app=f"prefork_tcp.examples.{example}:main", extra=storage_config(driver, tmp_path, redis_server, "counts"))
    server = start(start_server, config, workers=3, env={"RATELIMIT_MESSAGES": "10", "RATELIMIT_WINDOW": "60"})
    clients = [Client(server.address("a")) for _ in range(3)]
    if example == "counter":
        answers = [int(answer) for answer in ask_all(clients, b"hello\r\n") + ask_all(clients, b"again\r\n")]
        assert sorted(answers) == list(range(1, 7))  # one address: one count over every worker
        assert direct(driver, tmp_path, redis_server, "counts").get("messages:127.0.0.1") == b"6"
    else:
        for _ in range(3):  # 9 messages from one address over three connections: within the limit
            assert set(ask_all(clients, b"ping\r\n")) == {b"ping\r\n"}
        clients[0].send(b"ping\r\n")
        assert clients[0].line() == b"ping\r\n"  # the 10th
        clients[1].send(b"ping\r\n")  # the 11th, on another connection, maybe another worker
        assert closed_by_server(clients[1]) == b"-ERR rate limit\r\n"
        clients[2].send(b"ping\r\n")
        assert closed_by_server(clients[2]) == b"-ERR rate limit\r\n"
    for client in clients:
        client.close()


@pytest.mark.parametrize(
    "table, error",
    [
        ('[kv.x]\ndriver = "memcached"\n', 'kv.x.driver: expected "sqlite" or "redis", got "memcached"'),
        ('[kv.x]\ndriver = "redis"\n', 'kv.x.addr: missing: driver "redis" needs an address'),
        ('[kv.x]\ndriver = "redis"\naddr = "127.0.0.1:6379"\n', "kv.x.addr: expected redis://, rediss:// or unix://"),
        ('[kv.x]\ndriver = "redis"\naddr = "redis://127.0.0.1:port/0"\n', "kv.x.addr: Port could not be cast"),
        ('[kv.x]\ndriver = "redis"\naddr = "redis://127.0.0.1:6379/db"\n', "kv.x.addr: the database must be a number"),
        ('[kv.x]\nfile = "a.db"\nprefix = "p:"\n', 'kv.x.prefix: not a key of driver "sqlite"'),
        ('[kv.x]\ndriver = "redis"\naddr = "redis://127.0.0.1:6379/0"\nfile = "a.db"\n', 'kv.x.file: not a key of driver "redis"'),
        ('[kv.x]\ndrvier = "sqlite"\n', "kv.x.drvier: unknown key (did you mean 'driver'?)"),
        ('[kv.x]\ntimeout = "2h"\n', "kv.x.timeout:"),
        ('[kv]\nx = "sqlite"\n', "kv.x: expected a table"),
        ('[kv.a]\n[kv.b]\nfile = "prefork-tcp-a.db"\n', "kv.b.file: \"prefork-tcp-a.db\" is already the file of storage 'a'"),
        ('[kv.x]\nfile = ":memory:"\n', 'kv.x.file: ":memory:": the workers share a file'),
        ('[kv.x]\ndriver = "redis"\naddr = "redis://h:6379/0?socket_timeout=60"\n', "kv.x.addr: the only query an address takes is ?db=N"),
        ('[kv.x]\ndriver = "redis"\naddr = "redis://h:6379/0?db=1"\n', "kv.x.addr: the database goes in the path"),
        ('[kv.x]\ndriver = "redis"\naddr = "redis://h:6379/0"\nprefix = ""\n', "kv.x.prefix: empty"),
        (
            '[kv.x]\ndriver = "redis"\naddr = "redis://h:6379/0"\nprefix = "app:"\n'
            '[kv.y]\ndriver = "redis"\naddr = "redis://h:6379/0"\nprefix = "app:y:"\n',
            'kv.y.prefix: "app:y:" overlaps the prefix "app:" of storage \'x\'',
        ),
    ],
)
def test_bad_storage_config_is_one_line_and_exit_2(tmp_path, table, error):
    path = tmp_path / "bad.toml"
    path.write_text(servers_config("a", app="kv_apps:main", extra=table))
    result = manage("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert error in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_bad_redis_address_never_shows_its_password(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(servers_config("a", app="kv_apps:main", extra='[kv.x]\ndriver = "redis"\naddr = "redis://u:s3cret@h:99999/0"\n'))
    result = manage("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "kv.x.addr:" in result.stderr and "redis://h:99999/0" in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("driver_table", ["sqlite", "redis"])
def test_a_storage_that_cannot_be_opened_stops_the_start_naming_it(start_server, tmp_path, driver_table):
    if driver_table == "sqlite":
        table = f'[kv.orders]\nfile = "{tmp_path / "missing-dir" / "orders.db"}"\n'
        cause = r"cannot open storage 'orders' \(sqlite .*orders.db\): unable to open database file"
    else:
        from harness import free_port

        port = free_port()
        table = f'[kv.orders]\ndriver = "redis"\naddr = "redis://127.0.0.1:{port}/0"\ntimeout = "500ms"\n'
        cause = rf"cannot open storage 'orders' \(redis redis://127.0.0.1:{port}/0\): .*refused"
    server = start_server(servers_config("a", app="kv_apps:main", extra=table), workers=1, ready=False)
    assert server.proc.wait(60) == 2
    server.wait_log(cause)
    check = tmp_path / "check.toml"
    check.write_text(servers_config("a", app="kv_apps:main", extra=table))
    result = manage("check", "-c", str(check), cwd=tmp_path)
    assert result.returncode == 2 and "cannot open storage 'orders'" in result.stderr


def test_a_reload_to_a_storage_that_cannot_be_opened_keeps_the_workers(start_server, tmp_path):
    server = start(start_server, servers_config("a", app="kv_apps:main", extra=storage_config("sqlite", tmp_path)), workers=1)
    with Client(server.address("a")) as client:
        client.send(b"set k v\r\n")
        assert client.line() == b"ok\r\n"
        (tmp_path / "server.toml").write_text(
            servers_config("a", app="kv_apps:main", extra=f'[kv.shared]\nfile = "{tmp_path / "nope" / "x.db"}"\n')
        )
        server.send_signal(1)  # SIGHUP
        server.wait_log(r"config not reloaded: cannot open storage 'shared'")
        client.send(b"get k\r\n")
        assert client.line() == b"v\r\n"
