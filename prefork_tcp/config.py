"""The configuration: one dataclass per TOML section, each field declared once with its
parser, default and documentation; loading, validating and printing all read those
declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import values as v
from .framing import DEFAULT_DELIMITER, DEFAULT_MAX_SIZE, READ_SIZE
from .scoreboard import MAX_SERVERS
from .sockets import BACKLOG, Address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_ADDRESS = "tcp://127.0.0.1:8889"
DEFAULT_SERVER = "default"
#: The most worker processes one master runs (also the bound of ``-w``).
MAX_WORKERS = 256

_KEEPIDLE = v.DurationBetween("1s", "32767s", or_zero=True)  # TCP_KEEPIDLE takes 1..32767 seconds
_WORKER_TIMEOUT = v.DurationBetween("10ms", "24h")


class ConfigError(Exception):
    """An invalid setting; the message is one line naming the key and the value."""


def setting(
    *,
    parse: v.Parser,
    doc: str,
    default: Any = dataclasses.MISSING,
    factory: Callable[[], Any] | None = None,
    default_doc: str = "",
    example: Any = dataclasses.MISSING,
    emit: Callable[[Any], Any] | None = None,
) -> Any:
    """Return the field declaring one config key; loading, ``check``, the docs and the CLI flags all read it.

    ``parse`` validates a raw TOML value (its bounds are stated in the docs and CLI help); ``emit`` turns the
    parsed value back into TOML for ``check``. Without ``default`` or ``factory`` the key is required.
    ``default_doc`` says what ``factory`` computes; ``example`` is the value conf/prefork_tcp.toml shows where
    the default would not serve (a required key, a computed default, an app to run).
    """
    meta = {"parse": parse, "doc": doc, "emit": emit or (lambda value: value), "default_doc": default_doc, "example": example}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _default_workers() -> int:
    return min(os.cpu_count() or 1, MAX_WORKERS)


@dataclass(frozen=True)
class ServerConfig:
    """``[tcp.servers.NAME]``: one server, its address and how its bytes are framed; NAME is ``request.server``."""

    name: str
    addr: Address = setting(
        parse=v.address, emit=str, example=DEFAULT_ADDRESS, doc="tcp://host:port, host:port, [::1]:port or unix:///path"
    )
    delimiter: bytes = setting(
        default=DEFAULT_DELIMITER, parse=v.delimiter, emit=v.format_delimiter, doc='end of each message, kept in the body; "" = stream mode'
    )
    max_message_size: int = setting(
        default=DEFAULT_MAX_SIZE,
        parse=v.IntBetween(1, 1 << 30),
        doc="bytes a message may hold without its delimiter; more closes the connection",
    )
    read_buf_size: int = setting(
        default=READ_SIZE,
        parse=v.MegabytesUpTo(16),
        emit=v.format_megabytes,
        doc="MB asked for by one read (RoadRunner's key; default 64 KiB)",
    )
    idle_timeout: float = setting(
        default=0.0, parse=v.duration, emit=v.format_duration, doc="nothing read or written this long: close; 0 = never"
    )
    read_timeout: float = setting(
        default=60.0,
        parse=v.duration,
        emit=v.format_duration,
        doc="a started message must be complete this soon; 0 = never (not used in stream mode)",
    )
    write_timeout: float = setting(
        default=60.0, parse=v.duration, emit=v.format_duration, doc="queued output must make progress this often; 0 = never"
    )
    keepalive: float = setting(
        default=0.0, parse=_KEEPIDLE, emit=v.format_duration, doc="TCP keepalive idle time of accepted sockets; 0 = off"
    )
    backlog: int = setting(
        default=BACKLOG, parse=v.IntBetween(1, 65535), doc="listen(2) backlog (the kernel caps it at net.core.somaxconn)"
    )
    proxy_protocol: str = setting(
        default="off", parse=v.proxy_protocol, doc="a PROXY header each connection sends first, read before CONNECTED (auto: v1 or v2)"
    )
    proxy_allow_from: tuple[v.Network, ...] = setting(
        default=v.networks(["127.0.0.1", "::1"]),
        parse=v.networks,
        emit=v.format_networks,
        doc="addresses or CIDR blocks that may send a PROXY header; others are closed",
    )


@dataclass(frozen=True)
class SupervisorConfig:
    """``[tcp.pool.supervisor]``: limits the master enforces on workers."""

    watch_tick: float = setting(
        default=1.0, parse=v.DurationBetween("10ms", "1h"), emit=v.format_duration, doc="how often the master checks the limits below"
    )
    ttl: float = setting(default=0.0, parse=v.duration, emit=v.format_duration, doc="recycle a worker older than this; 0 = never")
    idle_ttl: float = setting(default=0.0, parse=v.duration, emit=v.format_duration, doc="recycle a worker idle for this long; 0 = never")
    max_worker_memory: int = setting(
        default=0, parse=v.IntBetween(0, 1 << 20), doc="MB of RSS above which a worker is recycled; 0 = no limit"
    )
    exec_ttl: float = setting(
        default=0.0, parse=v.duration, emit=v.format_duration, doc="how long one event may run before its worker is killed; 0 = no limit"
    )


@dataclass(frozen=True)
class PoolConfig:
    """``[tcp.pool]``: the worker processes."""

    num_workers: int = setting(
        factory=_default_workers, default_doc="the number of CPUs", example=2, parse=v.IntBetween(1, MAX_WORKERS), doc="worker processes"
    )
    max_connections: int = setting(
        default=0, parse=v.IntBetween(0, 1_000_000), doc="open connections per worker; 0 = as many as the open-files limit allows"
    )
    max_jobs: int = setting(default=0, parse=v.IntBetween(0, 10**12), doc="events a worker handles before it is recycled; 0 = never")
    allocate_timeout: float = setting(
        default=60.0, parse=_WORKER_TIMEOUT, emit=v.format_duration, doc="a worker must be ready this soon after it is started"
    )
    destroy_timeout: float = setting(
        default=60.0, parse=_WORKER_TIMEOUT, emit=v.format_duration, doc="a stopping worker gets this long, then SIGKILL"
    )
    slow_event: float = setting(
        default=0.01,
        parse=v.DurationBetween("2ms", "1h", or_zero=True),
        emit=v.format_duration,
        doc=(
            "an event running this long moves its worker's other connections to other workers "
            "(keep it above the application's usual event); 0 = never"
        ),
    )
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)


@dataclass(frozen=True)
class TcpConfig:
    """``[tcp]``: the servers and their worker pool."""

    servers: tuple[ServerConfig, ...] = field(default=(), metadata={"named": ServerConfig})
    pool: PoolConfig = field(default_factory=PoolConfig)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: where and how the master and workers log."""

    level: str = setting(default="info", parse=v.log_level, doc="the least severe messages logged")
    format: str = setting(default="text", parse=v.log_format, doc="text: one readable line per message; json: one object per line")
    file: str = setting(default="", parse=v.string, doc='a file to append to; "" or "-" = standard error')


@dataclass(frozen=True)
class ControlConfig:
    """``[control]``: the management socket."""

    socket: str = setting(
        default="", parse=v.string, doc='unix socket for the management commands (mode 0600); "" = PIDFILE.sock if a pidfile is set'
    )


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics from the master (docs/operations.md, "Metrics")."""

    addr: Address | None = setting(
        default=None,
        parse=v.metrics_address,
        emit=lambda addr: str(addr) if addr else "",
        default_doc='""',
        doc='host:port to serve /metrics and /ready at (HTTP); "" = off',
    )


@dataclass(frozen=True)
class KvConfig:
    """``[kv.NAME]``: a key-value storage shared by every worker, ``prefork_tcp.kv.storage("NAME")`` (docs/kv.md)."""

    name: str
    driver: str = setting(
        default="sqlite", parse=v.kv_driver, doc="sqlite: one file shared by the workers of this machine; redis: shared by every machine"
    )
    file: str = setting(
        default="", parse=v.string, default_doc="prefork-tcp-NAME.db", doc="sqlite: the database file (relative: to the working directory)"
    )
    addr: str = setting(
        default="", parse=v.redis_url, doc="redis: redis://[:password@]host:port/db, rediss:// for TLS, or unix:///path?db=N"
    )
    prefix: str = setting(
        default="",
        parse=v.string,
        default_doc='"prefork_tcp:NAME:"',
        doc="redis: what every key of this storage starts with; clear() deletes only those",
    )
    timeout: float = setting(
        default=2.0,
        parse=v.DurationBetween("10ms", "60s"),
        emit=v.format_duration,
        doc="the longest one operation waits: for sqlite's write lock, for redis' answer",
    )


@dataclass(frozen=True)
class Config:
    """The whole effective configuration of one server."""

    app: str = setting(
        default="",
        parse=v.app_spec,
        example="prefork_tcp.examples.echo:main",
        doc='the application, "module:callable" (callable defaults to main); the APP argument wins',
    )
    pidfile: str = setting(default="", parse=v.string, doc="file the master writes its pid to")
    proc_name: str = setting(default="prefork-tcp", parse=v.string, doc="first word of the process titles")
    user: str = setting(default="", parse=v.user, doc="user the workers run as (the master must be root)")
    group: str = setting(default="", parse=v.group, doc="group the workers run as")
    umask: int = setting(default=0o022, parse=v.umask, emit=v.format_umask, doc="umask of the master and workers")
    tcp: TcpConfig = field(default_factory=TcpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    kv: tuple[KvConfig, ...] = field(default=(), metadata={"named": KvConfig})
    #: The file it was read from ("" = none), for the reload log line.
    source: str = ""

    @property
    def servers(self) -> tuple[ServerConfig, ...]:
        return self.tcp.servers

    @property
    def pool(self) -> PoolConfig:
        return self.tcp.pool


def sections(cls: type = Config, path: str = "") -> Iterator[tuple[str, type]]:
    """Yield ``(dotted path, class)`` of every TOML table, the top level ("") first, in declaration order."""
    yield path, cls
    for f in dataclasses.fields(cls):
        if "named" in f.metadata:
            yield from sections(f.metadata["named"], _join(path, f.name) + ".NAME")
        elif dataclasses.is_dataclass(f.default_factory):
            yield from sections(f.default_factory, _join(path, f.name))


def keys(section: type) -> list[dataclasses.Field[Any]]:
    """Return the fields of ``section`` declared with ``setting``: its keys, in declaration order."""
    return [f for f in dataclasses.fields(section) if "parse" in f.metadata]


def declaration(key_path: str) -> dataclasses.Field[Any]:
    """Return the field declaring the key at ``key_path`` (``"tcp.pool.max_jobs"``); raises ``KeyError``."""
    section_path, _, name = key_path.rpartition(".")
    for path, section in sections():
        if path == section_path:
            for f in keys(section):
                if f.name == name:
                    return f
    raise KeyError(key_path)


def describe(f: dataclasses.Field[Any]) -> str:
    """Return what a key means, its bounds and its computed default, as one line of text."""
    parts = [f.metadata["doc"], v.bounds(f.metadata["parse"])]
    if f.metadata["default_doc"]:
        parts.append(f"default: {f.metadata['default_doc']}")
    return "; ".join(part for part in parts if part)


#: Fields that are not keys of the TOML document.
_NOT_KEYS = {"name", "source"}


def load(path: str | None, overrides: dict[str, Any] | None = None, binds: list[str] | None = None) -> Config:
    """Return the validated config from ``path`` (or none), CLI ``overrides`` and ``--bind`` values.

    ``overrides`` maps dotted key paths (``"tcp.pool.num_workers"``) to raw values.
    Raises ``ConfigError``.
    """
    raw = read_file(path) if path else {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            *parents, key = dotted.split(".")
            _table(raw, parents)[key] = value
    for name, addr in _parse_binds(binds or []):
        _table(raw, ["tcp", "servers", name])["addr"] = addr
    if not path and not binds:
        _table(raw, ["tcp"])["servers"] = {DEFAULT_SERVER: {"addr": DEFAULT_ADDRESS}}
    config = _build(Config, v.expand_env(raw), "")
    if not config.servers:
        raise ConfigError("tcp.servers: no servers configured (add a [tcp.servers.NAME] table with an addr)")
    return dataclasses.replace(config, source=path or "")


def read_file(path: str) -> dict[str, Any]:
    """Return the TOML document at ``path`` as a dict; raises ``ConfigError``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(f"{v.show(path)}: cannot read config: {exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _parse_binds(binds: list[str]) -> list[tuple[str, str]]:
    """Return ``(server name, address)`` for each ``[NAME=]ADDR``; unnamed ones are default, default-2, ..."""
    out, unnamed = [], 0
    for bind in binds:
        name, sep, addr = bind.partition("=")
        if not sep:
            unnamed += 1
            name, addr = (DEFAULT_SERVER if unnamed == 1 else f"{DEFAULT_SERVER}-{unnamed}"), bind
        out.append((name, addr))
    return out


def _table(raw: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Return the table at ``keys`` in the document ``raw``, adding missing ones; raises ``ConfigError``."""
    path = ""
    for key in keys:
        path = _join(path, key)
        raw = raw.setdefault(key, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a table, got {v.brief(raw)}")
    return raw


def _build(cls: type, raw: Any, path: str, **fixed: Any) -> Any:
    """Return an instance of section ``cls`` from the TOML table ``raw`` at ``path``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table, got {v.brief(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_KEYS}
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key(_join(path, key), key, list(fields)))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name in _NAMED:
            kwargs[name] = _NAMED[name](raw.get(name, {}), key_path)
        elif name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key_path}: missing")
            if dataclasses.is_dataclass(f.default_factory):
                kwargs[name] = _build(f.default_factory, {}, key_path)
        elif "parse" in f.metadata:
            try:
                kwargs[name] = f.metadata["parse"](raw[name])
            except ValueError as exc:
                raise ConfigError(f"{key_path}: {exc}") from None
        else:
            assert isinstance(f.default_factory, type)  # a section: its class makes its defaults
            kwargs[name] = _build(f.default_factory, raw[name], key_path)
    return cls(**fixed, **kwargs)


def _build_servers(raw: Any, path: str) -> tuple[ServerConfig, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of servers, got {v.brief(raw)}")
    servers: list[ServerConfig] = []
    seen: dict[Address, str] = {}
    for name, table in raw.items():
        server_path = _join(path, name)
        if isinstance(table, dict) and "addr" not in table:
            raise ConfigError(f"{server_path}.addr: missing: server {name!r} needs an address, as in addr = {v.show(DEFAULT_ADDRESS)}")
        server = _build(ServerConfig, table, server_path, name=name)
        other = seen.get(server.addr)
        if other is not None and not (server.addr.kind == "tcp" and server.addr.port == 0):
            raise ConfigError(f"{server_path}.addr: {v.brief(str(server.addr))} is already used by server {other!r}")
        seen[server.addr] = name
        servers.append(server)
    if len(servers) > MAX_SERVERS:
        raise ConfigError(f"{path}: {len(servers)} servers; one master serves at most {MAX_SERVERS}")
    return tuple(servers)


def _build_kv(raw: Any, path: str) -> tuple[KvConfig, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of storages, got {v.brief(raw)}")
    storages: list[KvConfig] = []
    files: dict[str, str] = {}
    prefixes: dict[tuple[str, str], str] = {}  # (address, prefix) -> storage
    for name, table in raw.items():
        storage_path = _join(path, name)
        storage = _build(KvConfig, table, storage_path, name=name)
        given = {key for key in ("file", "addr", "prefix") if isinstance(table, dict) and table.get(key)}
        stray = sorted(given - ({"file"} if storage.driver == "sqlite" else {"addr", "prefix"}))
        if stray:
            raise ConfigError(f"{storage_path}.{stray[0]}: not a key of driver {v.show(storage.driver)}")
        if storage.driver == "redis":
            if not storage.addr:
                raise ConfigError(f'{storage_path}.addr: missing: driver "redis" needs an address, as in addr = "redis://127.0.0.1:6379/0"')
            if isinstance(table, dict) and table.get("prefix") == "":
                raise ConfigError(f"{storage_path}.prefix: empty: clear() would delete every key of the database")
            storage = dataclasses.replace(storage, prefix=storage.prefix if "prefix" in given else f"prefork_tcp:{name}:")
            for (addr, prefix), other in prefixes.items():
                if addr == storage.addr and (prefix.startswith(storage.prefix) or storage.prefix.startswith(prefix)):
                    raise ConfigError(
                        f"{storage_path}.prefix: {v.brief(storage.prefix)} overlaps the prefix {v.brief(prefix)} of storage {other!r} "
                        "at the same address: the clear() of one would delete keys of the other"
                    )
            prefixes[(storage.addr, storage.prefix)] = name
        else:
            if storage.file == ":memory:" or storage.file.startswith("file:"):
                raise ConfigError(f"{storage_path}.file: {v.brief(storage.file)}: the workers share a file, not a memory database or a URI")
            storage = dataclasses.replace(storage, file=storage.file or f"prefork-tcp-{name}.db")
            where = os.path.abspath(storage.file)
            if where in files:
                raise ConfigError(f"{storage_path}.file: {v.brief(storage.file)} is already the file of storage {files[where]!r}")
            files[where] = name
        storages.append(storage)
    return tuple(storages)


#: Tables of named tables, and how each is built.
_NAMED: dict[str, Callable[[Any, str], tuple[Any, ...]]] = {"servers": _build_servers, "kv": _build_kv}


def _join(path: str, key: str) -> str:
    """Return the dotted key path of ``key`` in ``path``, quoting a key TOML cannot write bare."""
    key = v.toml_key(key)
    return f"{path}.{key}" if path else key


def _unknown_key(key_path: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(known))})"
    return f"{key_path}: unknown key{hint}"


def to_toml(config: Config) -> str:
    """Return the effective config as a TOML document, every key written out."""
    lines: list[str] = []
    _emit_table(config, "", lines)
    return "\n".join(lines).strip() + "\n"


def _emit_table(obj: Any, path: str, lines: list[str]) -> None:
    subtables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        if f.name in _NOT_KEYS:
            continue
        value = getattr(obj, f.name)
        if "named" in f.metadata:
            subtables.extend((_join(_join(path, f.name), item.name), item) for item in value)
        elif "emit" not in f.metadata:
            subtables.append((_join(path, f.name), value))
        else:
            doc = f.metadata.get("doc", "")
            line = f"{f.name} = {v.show(f.metadata['emit'](value))}"
            lines.append(f"{line:<40} # {doc}" if doc else line)
    for sub_path, sub in subtables:
        body: list[str] = []
        _emit_table(sub, sub_path, body)
        if body and body[0]:  # scalar keys first: this table needs its header
            lines.extend(["", f"[{sub_path}]"])
        lines.extend(body)
