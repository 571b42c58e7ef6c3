"""Config loading, validation, error messages and printing (no server)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork_tcp import config as cfg
from prefork_tcp import values


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
    assert (server.idle_timeout, server.read_timeout, server.write_timeout, server.keepalive) == (0, 60, 60, 0)
    assert server.backlog == 2048 and pool.max_connections == 0


def test_the_default_worker_count_stays_in_bounds(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1000)
    assert cfg.load(None).pool.num_workers == 256


def test_seed_config_loads(tmp_path):
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "conf" / "smtp.toml").read_text()
    config = load_text(tmp_path, text)
    assert [(s.name, str(s.addr)) for s in config.servers] == [("smtp", "tcp://127.0.0.1:1025"), ("server2", "tcp://127.0.0.1:8889")]
    assert config.pool.num_workers == 2 and config.app == "prefork_tcp.examples.smtp:main"


def test_documented_reference_config_loads_with_defaults(tmp_path):
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "conf" / "prefork_tcp.toml").read_text()
    config = load_text(tmp_path, text)
    assert config.log == cfg.LogConfig() and config.pool.supervisor == cfg.SupervisorConfig()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[tcp.pool]\nnum_workers = -1\n" + SERVER, "tcp.pool.num_workers: expected a positive integer, got -1"),
        ("[tcp.pool]\nnum_workers = true\n" + SERVER, "tcp.pool.num_workers: expected a positive integer, got true"),
        ("[tcp.pool]\nmax_jobs = 1.5\n" + SERVER, "tcp.pool.max_jobs: expected an integer >= 0, got 1.5"),
        ("[tcp.pool]\nnum_wokers = 2\n" + SERVER, "tcp.pool.num_wokers: unknown key (did you mean 'num_workers'?)"),
        ("tpc = 1\n" + SERVER, "tpc: unknown key (did you mean 'tcp'?)"),
        ('[tcp.servers.smtp]\ndelimiter = "x"\n', "tcp.servers.smtp.addr: missing"),
        ("[tcp]\n", "tcp.servers: no servers configured"),
        ('app = "x:y"\n', "tcp.servers: no servers configured"),
        ('[tcp.servers.s]\naddr = "127.0.0.1:70000"\n', 'tcp.servers.s.addr: port must be a number from 0 to 65535, got "127.0.0.1:70000"'),
        ('[tcp.servers.s]\naddr = "http://x:1"\n', "tcp.servers.s.addr: unknown scheme 'http'"),
        ("[tcp.servers.s]\naddr = 8889\n", 'tcp.servers.s.addr: expected an address such as "tcp://127.0.0.1:8889", got 8889'),
        ('[tcp.servers.s]\naddr = "127.0.0.1:1"\ndelimiter = 10\n', "tcp.servers.s.delimiter: expected a string"),
        (
            '[tcp.servers.s]\naddr = "127.0.0.1:1"\nmax_message_size = 0\n',
            "tcp.servers.s.max_message_size: expected a positive integer, got 0",
        ),
        ('[tcp.pool.supervisor]\nttl = "5 minutes"\n' + SERVER, "tcp.pool.supervisor.ttl: expected a duration"),
        (
            '[tcp.pool.supervisor]\nwatch_tick = "0s"\n' + SERVER,
            'tcp.pool.supervisor.watch_tick: expected a duration from 10ms to 1h, got "0s"',
        ),
        ("[tcp.pool]\ndestroy_timeout = -1\n" + SERVER, "tcp.pool.destroy_timeout: expected a duration"),
        ('[log]\nlevel = "loud"\n' + SERVER, 'log.level: expected one of debug, info, warning, error, critical, got "loud"'),
        ('[log]\nformat = "xml"\n' + SERVER, 'log.format: expected "text" or "json", got "xml"'),
        ('umask = "999"\n' + SERVER, 'umask: expected an octal umask such as 0o022, got "999"'),
        ('user = "no-such-user-here"\n' + SERVER, 'user: no such user, got "no-such-user-here"'),
        ('app = "not an app"\n' + SERVER, 'app: expected an application as "module:callable"'),
        ("tcp = 3\n", "tcp: expected a table, got 3"),
        (
            '[tcp.servers.a]\naddr = "127.0.0.1:7"\n[tcp.servers.b]\naddr = "tcp://127.0.0.1:7"\n',
            "tcp.servers.b.addr: \"tcp://127.0.0.1:7\" is already used by server 'a'",
        ),
        ('[tcp.servers."my server"]\naddr = "127.0.0.1:1"\nadr = 1\n', "tcp.servers.\"my server\".adr: unknown key (did you mean 'addr'?)"),
    ],
)
def test_errors_name_the_key_and_value(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


BOUNDS_BROKEN = [
    ("[tcp.pool]\nnum_workers = 100000", "tcp.pool.num_workers: expected an integer from 1 to 256, got 100000"),
    ("[tcp.pool]\nnum_workers = 0", "tcp.pool.num_workers: expected a positive integer, got 0"),
    ("[tcp.pool]\nmax_jobs = 1000000000001", "tcp.pool.max_jobs: expected an integer from 0 to 1000000000000, got 1000000000001"),
    ("[tcp.pool]\nmax_jobs = -1", "tcp.pool.max_jobs: expected an integer >= 0, got -1"),
    ("[tcp.pool]\nmax_connections = 1000001", "tcp.pool.max_connections: expected an integer from 0 to 1000000, got 1000001"),
    ("[tcp.pool]\nmax_connections = -1", "tcp.pool.max_connections: expected an integer >= 0, got -1"),
    ('[tcp.pool]\nallocate_timeout = "5ms"', 'tcp.pool.allocate_timeout: expected a duration from 10ms to 24h, got "5ms"'),
    ('[tcp.pool]\ndestroy_timeout = "10000h"', 'tcp.pool.destroy_timeout: expected a duration from 10ms to 24h, got "10000h"'),
    ('[tcp.pool]\ndestroy_timeout = "24h1s"', 'tcp.pool.destroy_timeout: expected a duration from 10ms to 24h, got "24h1s"'),
    ('[tcp.pool.supervisor]\nwatch_tick = "1ns"', 'tcp.pool.supervisor.watch_tick: expected a duration from 10ms to 1h, got "1ns"'),
    ("[tcp.pool.supervisor]\nwatch_tick = 3601", "tcp.pool.supervisor.watch_tick: expected a duration from 10ms to 1h, got 3601"),
    ('[tcp.pool.supervisor]\nttl = "169h"', 'tcp.pool.supervisor.ttl: expected a duration from 0s to 168h, got "169h"'),
    ("[tcp.pool.supervisor]\nttl = 1e400", "tcp.pool.supervisor.ttl: expected a duration from 0s to 168h, got inf"),
    ("[tcp.pool.supervisor]\nttl = nan", "tcp.pool.supervisor.ttl: expected a duration from 0s to 168h, got nan"),
    ("[tcp.pool.supervisor]\nidle_ttl = " + "9" * 400, "tcp.pool.supervisor.idle_ttl: expected a duration from 0s to 168h, got 999"),
    (
        '[tcp.pool.supervisor]\nexec_ttl = "' + "9" * 400 + 's"',
        'tcp.pool.supervisor.exec_ttl: expected a duration from 0s to 168h, got "999',
    ),
    ('[tcp.pool.supervisor]\nexec_ttl = "1e400s"', "tcp.pool.supervisor.exec_ttl: expected a duration from 0s to 168h, written"),
    (
        "[tcp.pool.supervisor]\nmax_worker_memory = 1048577",
        "tcp.pool.supervisor.max_worker_memory: expected an integer from 0 to 1048576, got 1048577",
    ),
    (
        "[tcp.servers.s]\nmax_message_size = 1073741825",
        "tcp.servers.s.max_message_size: expected an integer from 1 to 1073741824, got 1073741825",
    ),
    ("[tcp.servers.s]\nread_buf_size = 17", "tcp.servers.s.read_buf_size: expected a number of megabytes above 0 and at most 16, got 17"),
    ("[tcp.servers.s]\nread_buf_size = 0", "tcp.servers.s.read_buf_size: expected a number of megabytes above 0 and at most 16, got 0"),
    ("[tcp.servers.s]\nread_buf_size = inf", "tcp.servers.s.read_buf_size: expected a number of megabytes above 0 and at most 16, got inf"),
    ('[tcp.servers.s]\nidle_timeout = "8d"', "tcp.servers.s.idle_timeout: expected a duration from 0s to 168h, written"),
    ("[tcp.servers.s]\nread_timeout = -1", "tcp.servers.s.read_timeout: expected a duration from 0s to 168h, got -1"),
    ('[tcp.servers.s]\nwrite_timeout = "200h"', 'tcp.servers.s.write_timeout: expected a duration from 0s to 168h, got "200h"'),
    ('[tcp.servers.s]\nkeepalive = "500ms"', 'tcp.servers.s.keepalive: expected 0 or a duration from 1s to 32767s, got "500ms"'),
    ("[tcp.servers.s]\nkeepalive = 32768", "tcp.servers.s.keepalive: expected 0 or a duration from 1s to 32767s, got 32768"),
    ("[tcp.servers.s]\nbacklog = 0", "tcp.servers.s.backlog: expected a positive integer, got 0"),
    ("[tcp.servers.s]\nbacklog = 65536", "tcp.servers.s.backlog: expected an integer from 1 to 65535, got 65536"),
    ('[tcp.servers.s]\nbacklog = "2048"', 'tcp.servers.s.backlog: expected a positive integer, got "2048"'),
    ('[tcp.servers.s]\nproxy_protocol = "v3"', 'tcp.servers.s.proxy_protocol: expected "off", "v1", "v2" or "auto", got "v3"'),
    ("[tcp.servers.s]\nproxy_protocol = true", 'tcp.servers.s.proxy_protocol: expected "off", "v1", "v2" or "auto", got true'),
    ('[tcp.servers.s]\nproxy_allow_from = "10.0.0.0/8"', "tcp.servers.s.proxy_allow_from: expected a list of addresses or CIDR blocks"),
    (
        '[tcp.servers.s]\nproxy_allow_from = ["10.0.0.0/33"]',
        'tcp.servers.s.proxy_allow_from: expected addresses or CIDR blocks, got "10.0.0.0/33"',
    ),
    (
        '[tcp.servers.s]\nproxy_allow_from = ["example.org"]',
        'tcp.servers.s.proxy_allow_from: expected addresses or CIDR blocks, got "example.org"',
    ),
]


@pytest.mark.parametrize("text, expected", BOUNDS_BROKEN)
def test_values_out_of_bounds_are_errors_naming_the_bound(tmp_path, text, expected):
    text = text.replace("[tcp.servers.s]", '[tcp.servers.s]\naddr = "127.0.0.1:1"')
    if "[tcp.servers.s]" not in text:
        text += "\n" + SERVER
    assert error_of(tmp_path, text).startswith(expected)


@pytest.mark.parametrize(
    "text",
    [
        "[tcp.pool]\nnum_workers = 256\nmax_jobs = 1000000000000\nmax_connections = 1000000\n"
        'allocate_timeout = "10ms"\ndestroy_timeout = "24h"',
        '[tcp.pool.supervisor]\nwatch_tick = "3600000ms"\nttl = "168h"\nidle_ttl = "10080m"\n'
        "exec_ttl = 604800\nmax_worker_memory = 1048576",
        "[tcp.pool.supervisor]\nwatch_tick = 0.01",
        '[tcp.servers.s]\nmax_message_size = 1073741824\nread_buf_size = 16\nidle_timeout = "168h"\nkeepalive = "32767s"\nbacklog = 65535',
        '[tcp.servers.s]\nmax_message_size = 1\nread_buf_size = 0.000001\nread_timeout = 0\nwrite_timeout = "0s"\n'
        'keepalive = "1s"\nbacklog = 1',
    ],
)
def test_values_on_their_bounds_are_accepted(tmp_path, text):
    text = text.replace("[tcp.servers.s]", '[tcp.servers.s]\naddr = "127.0.0.1:1"')
    config = load_text(tmp_path, text if "[tcp.servers.s]" in text else text + "\n" + SERVER)
    assert load_text(tmp_path, cfg.to_toml(config)) == config


def test_new_server_and_pool_keys_load(tmp_path):
    config = load_text(
        tmp_path,
        '[tcp.servers.s]\naddr = "127.0.0.1:1"\nidle_timeout = "5m"\nread_timeout = "2s"\n'
        'write_timeout = "1m30s"\nkeepalive = "75s"\nbacklog = 128\n[tcp.pool]\nmax_connections = 500\n',
    )
    (server,) = config.servers
    assert (server.idle_timeout, server.read_timeout, server.write_timeout, server.keepalive, server.backlog) == (300, 2, 90, 75, 128)
    assert config.pool.max_connections == 500
    printed = cfg.to_toml(config)
    assert 'idle_timeout = "5m"' in printed and 'write_timeout = "1m30s"' in printed and "backlog = 128" in printed
    assert "max_connections = 500" in printed


def test_listeners_are_bound_with_the_configured_backlog(monkeypatch):
    from prefork_tcp import cli, sockets

    asked = []

    def recording_bind(address, backlog=sockets.BACKLOG):
        asked.append(backlog)
        return sockets.bind(address, backlog=backlog)

    monkeypatch.setattr(cli, "bind", recording_bind)
    config = cfg.load(None, binds=["a=127.0.0.1:0", "b=127.0.0.1:0"])
    config = dataclasses.replace(
        config, tcp=dataclasses.replace(config.tcp, servers=(dataclasses.replace(config.servers[0], backlog=16), config.servers[1]))
    )
    listeners = cli._bind_all(config)
    try:
        assert asked == [16, 2048]
    finally:
        for listener in listeners:
            listener.sock.close()


@pytest.mark.parametrize(
    "text, overrides, binds, expected",
    [
        ("tcp = 1\n", {"tcp.pool.num_workers": 2}, [], "tcp: expected a table, got 1"),
        ("tcp = 1\n", {}, ["127.0.0.1:1"], "tcp: expected a table, got 1"),
        ("[tcp]\npool = []\n" + SERVER, {"tcp.pool.num_workers": 2}, [], "tcp.pool: expected a table, got []"),
        ("[tcp]\nservers = 3\n", {}, ["s=127.0.0.1:1"], "tcp.servers: expected a table, got 3"),
        ("[tcp]\nservers = 3\n", {}, [], "tcp.servers: expected a table of servers, got 3"),
        ('[tcp.servers]\ns = ["127.0.0.1:1"]\n', {}, ["s=127.0.0.1:2"], 'tcp.servers.s: expected a table, got ["127.0.0.1:1"]'),
        ('[[tcp.servers.s]]\naddr = "127.0.0.1:1"\n', {}, [], 'tcp.servers.s: expected a table, got [{addr = "127.0.0.1:1"}]'),
        ('log = "debug"\n' + SERVER, {"log.level": "info"}, [], 'log: expected a table, got "debug"'),
        ("[tcp.servers.s]\naddr = 1\n", {}, ["t=127.0.0.1:1"], "tcp.servers.s.addr: expected an address"),
    ],
)
def test_a_file_and_the_command_line_that_disagree_on_shape(tmp_path, text, overrides, binds, expected):
    assert error_of(tmp_path, text, overrides=overrides, binds=binds).startswith(expected)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'app = "\xff"\n', "invalid TOML: not UTF-8"),
        (b"a = " + b"[" * 5000 + b"]" * 5000, "invalid TOML"),
        (b"a = " + b"9" * 5000, "invalid TOML"),
    ],
)
def test_unreadable_documents_are_config_errors(tmp_path, content, expected):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(cfg.ConfigError, match=expected) as info:
        cfg.load(str(path))
    assert "\n" not in str(info.value)


# Documents of any shape. Half follow the real layout of tables, with any value, table or not,
# at every level; the rest draw keys partly from the real names and nest anything anywhere.
_SERVER_SHAPE = {key: None for key in ("addr", "delimiter", "read_buf_size", "keepalive", "backlog", "idle_timeout")}
_SHAPE = {
    "app": None,
    "pidfile": None,
    "user": None,
    "umask": None,
    "tcp": {
        "servers": {"s": _SERVER_SHAPE, "default": _SERVER_SHAPE},
        "pool": {
            "num_workers": None,
            "max_jobs": None,
            "destroy_timeout": None,
            "supervisor": {"watch_tick": None, "ttl": None, "max_worker_memory": None},
        },
    },
    "log": {"level": None, "format": None},
    "control": {"socket": None},
}
_REAL_KEYS = [
    "tcp",
    "pool",
    "servers",
    "supervisor",
    "addr",
    "num_workers",
    "max_jobs",
    "log",
    "control",
    "app",
    "user",
    "group",
    "umask",
    "level",
    "socket",
    "delimiter",
    "read_buf_size",
    "watch_tick",
    "keepalive",
    "backlog",
    "idle_timeout",
    "max_connections",
    "default",
    "s",
]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
_KEYS = st.sampled_from(_REAL_KEYS) | _TEXT
_SCALARS = (
    st.booleans()
    | st.integers()
    | st.floats()
    | _TEXT
    | st.sampled_from(["127.0.0.1:0", "unix:///tmp/x.sock", "1s", "10ms", "0", "${HOME}", "info", "m:f", "0o22"])
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12)


def _table_shaped_as(shape: dict) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {}, optional={key: _VALUES if sub is None else _table_shaped_as(sub) | _VALUES for key, sub in shape.items()}
    )


_DOCUMENTS = _table_shaped_as(_SHAPE) | st.dictionaries(_KEYS, _VALUES, max_size=5)
_OVERRIDES = st.fixed_dictionaries(
    {
        key: st.none() | _SCALARS
        for key in ("tcp.pool.num_workers", "tcp.pool.max_jobs", "pidfile", "log.level", "app")  # None: the flag is not given
    }
)
_BINDS = st.lists(st.sampled_from(["127.0.0.1:0", "s=127.0.0.1:0", "default=unix:///tmp/x.sock", "x", "="]) | _TEXT, max_size=3)


def _toml(value) -> str:
    """The test's own TOML writer (inline tables only), independent of the code under test."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS, _OVERRIDES, _BINDS)
def test_any_document_and_command_line_give_a_config_or_one_config_error(document, overrides, binds):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "c.toml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{_toml(key)} = {_toml(value)}\n" for key, value in document.items()))
        for args in ((path,), (path, overrides, binds), (None, overrides, binds)):
            try:
                config = cfg.load(*args)
            except cfg.ConfigError as exc:
                assert "\n" not in str(exc) and str(exc)
            else:
                assert isinstance(config, cfg.Config) and config.servers


def test_file_problems_are_one_line(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read config"):
        cfg.load(str(tmp_path / "missing.toml"))
    assert "invalid TOML" in error_of(tmp_path, "[tcp\n")


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    config = load_text(
        tmp_path,
        '[tcp.servers.s]\naddr = "127.0.0.1:${SMTP_PORT}"\n'
        '[tcp.servers.t]\naddr = "${UNSET_VAR:-127.0.0.1:2526}"\n'
        '[log]\nfile = "${UNSET_VAR}"\n',
    )
    assert [s.addr.port for s in config.servers] == [2525, 2526]
    assert config.log.file == ""


def test_cli_overrides_and_binds(tmp_path):
    text = '[tcp.servers.smtp]\naddr = "127.0.0.1:1025"\ndelimiter = "\\n"\n[tcp.pool]\nnum_workers = 3\n'
    config = load_text(
        tmp_path,
        text,
        overrides={"tcp.pool.num_workers": 5, "tcp.pool.max_jobs": None},
        binds=["smtp=127.0.0.1:2025", "127.0.0.1:9000", "127.0.0.1:9001"],
    )
    assert config.pool.num_workers == 5
    assert [(s.name, s.addr.port, s.delimiter) for s in config.servers] == [
        ("smtp", 2025, b"\n"),
        ("default", 9000, b"\r\n"),
        ("default-2", 9001, b"\r\n"),
    ]
    only_binds = cfg.load(None, binds=["x=unix:///tmp/x.sock"])
    assert [s.name for s in only_binds.servers] == ["x"]


def test_printed_config_loads_back_to_the_same_config(tmp_path):
    text = (
        'app = "m:f"\numask = 0o027\n[tcp.servers.a]\naddr = "[::1]:9"\ndelimiter = "\\u0000\\r\\n"\n'
        'read_buf_size = 2\n[tcp.servers.b]\naddr = "unix:///tmp/b.sock"\ndelimiter = ""\n'
        'keepalive = "9h6m7s"\nidle_timeout = "0.000001ms"\nwrite_timeout = 0.5\nbacklog = 7\n'
        '[tcp.servers."c d"]\naddr = "127.0.0.1:0"\nread_timeout = "61s"\n'
        '[tcp.pool]\nnum_workers = 3\nmax_connections = 9\nallocate_timeout = "1m30s"\n[tcp.pool.supervisor]\nexec_ttl = "250ms"\n'
        '[log]\nformat = "json"\n'
    )
    config = load_text(tmp_path, text)
    again = load_text(tmp_path, cfg.to_toml(config))
    assert again == config


def _generator():
    """The module scripts/gen_config_docs.py, which is not in a package."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "scripts" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_config_docs_are_current():
    generator = _generator()
    for path, text in generator.generated().items():
        assert path.read_text() == text, f"{path.name} is stale: run python3 scripts/gen_config_docs.py"
    assert generator.main(["--check"]) == 0


def test_the_reference_config_is_the_default_config(tmp_path):
    path = _generator().REFERENCE
    config = cfg.load(str(path))
    example = cfg.declaration("app").metadata["example"]
    assert config == dataclasses.replace(cfg.load(None), app=example, source=str(path))


def test_the_docs_give_every_key_with_its_default_and_bounds():
    generator = _generator()
    markdown, reference = generator.markdown(), generator.reference_toml()
    for path, section in cfg.sections():
        for f in cfg.keys(section):
            key = f"{path}.{f.name}" if path else f.name
            row = next((line for line in markdown.splitlines() if line.startswith(f"| `{key}` |")), None)
            assert row is not None, f"docs/configuration.md has no row for {key}"
            assert values.bounds(f.metadata["parse"]) in row
            assert re.search(rf"^(# )?{f.name} = ", reference, re.MULTILINE), f"conf/prefork_tcp.toml lacks {key}"
    assert '| `tcp.pool.supervisor.watch_tick` | `"1s"` | 10ms to 1h |' in markdown
    assert "| `tcp.servers.NAME.addr` | required |" in markdown
    assert "| `tcp.pool.num_workers` | the number of CPUs | 1 to 256 |" in markdown


def test_the_docs_show_the_errors_the_code_gives():
    markdown = _generator().markdown()
    assert "prefork-tcp: tcp.pool.num_workers: expected a positive integer, got -1\n" in markdown
    assert "prefork-tcp: tcp.pool.num_wokers: unknown key (did you mean 'num_workers'?)\n" in markdown


def test_a_stale_generated_file_is_reported(tmp_path, monkeypatch, capsys):
    generator = _generator()
    stale = tmp_path / "prefork_tcp.toml"
    stale.write_text(generator.reference_toml().replace("backlog = 2048", "backlog = 1024"))
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "REFERENCE", stale)
    monkeypatch.setattr(generator, "MARKDOWN", tmp_path / "configuration.md")
    assert generator.main(["--check"]) == 1
    assert "prefork_tcp.toml is stale" in capsys.readouterr().err
    assert generator.main([]) == 0 and generator.main(["--check"]) == 0


@pytest.mark.parametrize(
    "key_path, bad, shown",
    [
        ("tcp.pool.num_workers", "0", "1<=x<=256"),
        ("tcp.pool.max_jobs", "1000000000001", "0<=x<=1000000000000"),
        ("log.level", "loud", "'debug', 'info', 'warning', 'error', 'critical'"),
    ],
)
def test_serve_flags_take_help_and_bounds_from_the_declarations(key_path, bad, shown):
    from prefork_tcp import cli

    flag = cli.OVERRIDING_FLAGS[key_path][-1]
    option = next(p for p in cli.serve.params if flag in p.opts)
    assert cfg.declaration(key_path).metadata["doc"][1:] in option.help and key_path in option.help
    result = CliRunner().invoke(cli.main, ["serve", "m:f", flag, bad])
    assert result.exit_code == 2 and f"'{flag}': " in result.output and shown in result.output


def test_every_flag_overriding_a_setting_names_a_declared_key():
    from prefork_tcp import cli

    assert set(cli.OVERRIDING_FLAGS) == {"tcp.pool.num_workers", "tcp.pool.max_jobs", "pidfile", "log.level"}
    with pytest.raises(KeyError):
        cfg.declaration("tcp.pool.no_such_key")


def test_the_readme_example_loads_and_its_error_is_the_real_one(tmp_path):
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_text(tmp_path, example)
    assert [(s.name, str(s.addr), s.delimiter) for s in config.servers] == [
        ("smtp", "tcp://127.0.0.1:1025", b"\r\n"),
        ("lines", "tcp://127.0.0.1:8889", b"\n"),
    ]
    message = error_of(tmp_path, "[tcp.pool]\nnum_workers = -1\n" + SERVER)
    assert f"\nprefork-tcp: {message}\n" in section
