"""Config loading, validation, error messages and printing (no server)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp import config as cfg
from prefork_tcp import values
from prefork_tcp.sockets import Address, format_peer, parse_address


def load_text(tmp_path, text: str, **kwargs) -> cfg.Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return cfg.load(str(path), **kwargs)


def error_of(tmp_path, text: str, **kwargs) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        load_text(tmp_path, text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


SERVER = '[tcp.servers.s]\naddr = "127.0.0.1:1"\n'


def test_defaults_without_a_file():
    config = cfg.load(None)
    (server,) = config.servers
    assert server.name == "default" and str(server.addr) == "tcp://127.0.0.1:8889"
    assert server.delimiter == b"\r\n" and server.max_message_size == 1024 * 1024
    pool = config.pool
    assert pool.num_workers >= 1 and pool.max_jobs == 0
    assert pool.allocate_timeout == pool.destroy_timeout == 60.0
    assert pool.supervisor.watch_tick == 1.0 and pool.supervisor.exec_ttl == 0.0


def test_seed_config_loads(tmp_path):
    import pathlib
    text = (pathlib.Path(__file__).parent.parent / "conf" / "smtp.toml").read_text()
    config = load_text(tmp_path, text)
    assert [(s.name, str(s.addr)) for s in config.servers] == [
        ("smtp", "tcp://127.0.0.1:1025"), ("server2", "tcp://127.0.0.1:8889")]
    assert config.pool.num_workers == 2 and config.app == "prefork_tcp.examples.smtp:main"


def test_documented_reference_config_loads_with_defaults(tmp_path):
    import pathlib
    text = (pathlib.Path(__file__).parent.parent / "conf" / "prefork_tcp.toml").read_text()
    config = load_text(tmp_path, text)
    assert config.log == cfg.LogConfig() and config.pool.supervisor == cfg.SupervisorConfig()


@pytest.mark.parametrize("text, expected", [
    ("[tcp.pool]\nnum_workers = -1\n" + SERVER, "tcp.pool.num_workers: expected a positive integer, got -1"),
    ("[tcp.pool]\nnum_workers = true\n" + SERVER, "tcp.pool.num_workers: expected a positive integer, got true"),
    ("[tcp.pool]\nmax_jobs = 1.5\n" + SERVER, "tcp.pool.max_jobs: expected an integer >= 0, got 1.5"),
    ("[tcp.pool]\nnum_wokers = 2\n" + SERVER, "tcp.pool.num_wokers: unknown key (did you mean 'num_workers'?)"),
    ("tpc = 1\n" + SERVER, "tpc: unknown key (did you mean 'tcp'?)"),
    ("[tcp.servers.smtp]\ndelimiter = \"x\"\n", "tcp.servers.smtp.addr: missing"),
    ("[tcp]\n", "tcp.servers: no servers configured"),
    ("app = \"x:y\"\n", "tcp.servers: no servers configured"),
    ('[tcp.servers.s]\naddr = "127.0.0.1:70000"\n', 'tcp.servers.s.addr: port must be a number from 0 to 65535, got "127.0.0.1:70000"'),
    ('[tcp.servers.s]\naddr = "http://x:1"\n', "tcp.servers.s.addr: unknown scheme 'http'"),
    ('[tcp.servers.s]\naddr = 8889\n', 'tcp.servers.s.addr: expected an address such as "tcp://127.0.0.1:8889", got 8889'),
    ('[tcp.servers.s]\naddr = "127.0.0.1:1"\ndelimiter = 10\n', "tcp.servers.s.delimiter: expected a string"),
    ('[tcp.servers.s]\naddr = "127.0.0.1:1"\nmax_message_size = 0\n', "tcp.servers.s.max_message_size: expected a positive integer, got 0"),
    ("[tcp.pool.supervisor]\nttl = \"5 minutes\"\n" + SERVER, 'tcp.pool.supervisor.ttl: expected a duration'),
    ("[tcp.pool.supervisor]\nwatch_tick = \"0s\"\n" + SERVER, 'tcp.pool.supervisor.watch_tick: expected a duration above zero, got "0s"'),
    ("[tcp.pool]\ndestroy_timeout = -1\n" + SERVER, "tcp.pool.destroy_timeout: expected a duration"),
    ("[log]\nlevel = \"loud\"\n" + SERVER, 'log.level: expected one of debug, info, warning, error, critical, got "loud"'),
    ("[log]\nformat = \"xml\"\n" + SERVER, 'log.format: expected "text" or "json", got "xml"'),
    ("umask = \"999\"\n" + SERVER, 'umask: expected an octal umask such as 0o022, got "999"'),
    ("user = \"no-such-user-here\"\n" + SERVER, 'user: no such user, got "no-such-user-here"'),
    ("app = \"not an app\"\n" + SERVER, 'app: expected an application as "module:callable"'),
    ("tcp = 3\n", "tcp: expected a table, got 3"),
    ('[tcp.servers.a]\naddr = "127.0.0.1:7"\n[tcp.servers.b]\naddr = "tcp://127.0.0.1:7"\n',
     "tcp.servers.b.addr: tcp://127.0.0.1:7 is already used by server 'a'"),
])
def test_errors_name_the_key_and_value(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


def test_file_problems_are_one_line(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read config"):
        cfg.load(str(tmp_path / "missing.toml"))
    assert "invalid TOML" in error_of(tmp_path, "[tcp\n")


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    config = load_text(tmp_path, '[tcp.servers.s]\naddr = "127.0.0.1:${SMTP_PORT}"\n'
                                 '[tcp.servers.t]\naddr = "${UNSET_VAR:-127.0.0.1:2526}"\n'
                                 '[log]\nfile = "${UNSET_VAR}"\n')
    assert [s.addr.port for s in config.servers] == [2525, 2526]
    assert config.log.file == ""


def test_cli_overrides_and_binds(tmp_path):
    text = '[tcp.servers.smtp]\naddr = "127.0.0.1:1025"\ndelimiter = "\\n"\n[tcp.pool]\nnum_workers = 3\n'
    config = load_text(tmp_path, text, overrides={"tcp.pool.num_workers": 5, "tcp.pool.max_jobs": None},
                       binds=["smtp=127.0.0.1:2025", "127.0.0.1:9000", "127.0.0.1:9001"])
    assert config.pool.num_workers == 5
    assert [(s.name, s.addr.port, s.delimiter) for s in config.servers] == [
        ("smtp", 2025, b"\n"), ("default", 9000, b"\r\n"), ("default-2", 9001, b"\r\n")]
    only_binds = cfg.load(None, binds=["x=unix:///tmp/x.sock"])
    assert [s.name for s in only_binds.servers] == ["x"]


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("60s", 60), ("1m30s", 90), ("2h", 7200), ("1.5s", 1.5), ("0", 0), ("0s", 0),
    ("1h2m3s", 3723), ("250us", 0.00025), (30, 30), (0.25, 0.25),
])
def test_durations(text, seconds):
    assert values.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1", "1x", "-1s", "1s2", " 1 s", "1m 30s", True, None, -3])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        values.duration(text)


@given(st.floats(min_value=0, max_value=10 ** 6, allow_nan=False).map(lambda x: round(x, 3)))
def test_formatted_durations_parse_back(seconds):
    assert values.duration(values.format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


def test_printed_config_loads_back_to_the_same_config(tmp_path):
    text = ('app = "m:f"\numask = 0o027\n[tcp.servers.a]\naddr = "[::1]:9"\ndelimiter = "\\u0000\\r\\n"\n'
            'read_buf_size = 2\n[tcp.servers.b]\naddr = "unix:///tmp/b.sock"\ndelimiter = ""\n'
            '[tcp.pool]\nnum_workers = 3\nallocate_timeout = "1m30s"\n[tcp.pool.supervisor]\nexec_ttl = "250ms"\n'
            '[log]\nformat = "json"\n')
    config = load_text(tmp_path, text)
    again = load_text(tmp_path, cfg.to_toml(config))
    assert again == config


@pytest.mark.parametrize("text, address", [
    ("tcp://127.0.0.1:8889", Address("tcp", "127.0.0.1", 8889)),
    ("127.0.0.1:0", Address("tcp", "127.0.0.1", 0)),
    ("[::1]:25", Address("tcp", "::1", 25)),
    ("tcp://[::]:25", Address("tcp", "::", 25)),
    (":25", Address("tcp", "0.0.0.0", 25)),
    ("localhost:25", Address("tcp", "localhost", 25)),
    ("unix:///run/app.sock", Address("unix", path="/run/app.sock")),
])
def test_addresses(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "host", "::1:25", "[::1]25", "unix://", "udp://x:1", "x:-1", "x:port"])
def test_bad_addresses(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_peer_names():
    import socket
    assert format_peer(socket.AF_INET, ("10.0.0.1", 5)) == "10.0.0.1:5"
    assert format_peer(socket.AF_INET6, ("::1", 5, 0, 0)) == "[::1]:5"
    assert format_peer(socket.AF_UNIX, "") == ""
    assert format_peer(socket.AF_UNIX, b"\x00abstract") == "\x00abstract"


def _declared(cls, prefix):
    for f in dataclasses.fields(cls):
        if "emit" in f.metadata:
            yield prefix + f.name, f


@pytest.mark.parametrize("cls, prefix", [
    (cfg.Config, ""), (cfg.ServerConfig, "tcp.servers.NAME."), (cfg.PoolConfig, "tcp.pool."),
    (cfg.SupervisorConfig, "tcp.pool.supervisor."), (cfg.LogConfig, "log."), (cfg.ControlConfig, "control."),
])
def test_every_declared_key_is_documented_with_its_default(cls, prefix):
    import pathlib
    root = pathlib.Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    reference = (root / "conf" / "prefork_tcp.toml").read_text()
    for key, f in _declared(cls, prefix):
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"README has no row for {key}"
        assert re.search(rf"^#? ?{f.name} = ", reference, re.MULTILINE), f"conf/prefork_tcp.toml lacks {key}"
        if f.default is not dataclasses.MISSING:
            shown = values.show(f.metadata["emit"](f.default))
            parsed_back = f.metadata["parse"](_first_cell_value(row))
            assert parsed_back == f.default, f"README default of {key} is not {shown}"


def _first_cell_value(row: str):
    """The README's default cell as the TOML value it shows."""
    from prefork_tcp.config import tomllib
    cell = row.split("|")[2].strip().strip("`")
    return tomllib.loads(f"v = {cell}")["v"]
