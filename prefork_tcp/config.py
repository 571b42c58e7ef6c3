"""The configuration: one dataclass per TOML section, each field declared once with its
parser, default and documentation; loading, validating and printing all read those
declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import values as v
from .sockets import BACKLOG, Address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_ADDRESS = "tcp://127.0.0.1:8889"
DEFAULT_SERVER = "default"
#: The most worker processes one master runs (also the bound of ``-w``).
MAX_WORKERS = 256

_KEEPIDLE = v.duration_between("1s", "32767s", or_zero=True)  # TCP_KEEPIDLE takes 1..32767 seconds
_WORKER_TIMEOUT = v.duration_between("10ms", "24h")


class ConfigError(Exception):
    """An invalid setting; the message is one line naming the key and the value."""


def setting(
    default: Any = dataclasses.MISSING,
    parse: v.Parser = v.string,
    doc: str = "",
    emit: Callable[[Any], Any] | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare one config key: its default, parser, doc text, and how ``check`` prints it."""
    meta = {"parse": parse, "doc": doc, "emit": emit or (lambda value: value)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _emit_delimiter(value: bytes) -> str:
    return value.decode("utf-8")


def _emit_megabytes(value: int) -> float:
    return value / (1024 * 1024)


@dataclass(frozen=True)
class ServerConfig:
    """``[tcp.servers.NAME]``: one listening address and how its bytes are framed."""

    name: str
    addr: Address = setting(parse=v.address, emit=str, doc="tcp://host:port, host:port, [::1]:port or unix:///path")
    delimiter: bytes = setting(b"\r\n", v.delimiter, "end of each message, kept in the body; \"\" = stream mode", _emit_delimiter)
    max_message_size: int = setting(1 << 20, v.int_between(1, 1 << 30),
                                    "bytes a message may hold without its delimiter; more closes the connection")
    read_buf_size: int = setting(64 * 1024, v.megabytes_up_to(16),
                                 "MB asked for by one read (RoadRunner's key; default 64 KiB)", _emit_megabytes)
    idle_timeout: float = setting(0.0, v.duration, "nothing read or written this long: close; 0 = never", v.format_duration)
    read_timeout: float = setting(60.0, v.duration,
                                  "a started message must be complete this soon; 0 = never (not used in stream mode)", v.format_duration)
    write_timeout: float = setting(60.0, v.duration, "queued output must make progress this often; 0 = never", v.format_duration)
    keepalive: float = setting(0.0, _KEEPIDLE, "TCP keepalive idle time of accepted sockets; 0 = off", v.format_duration)
    backlog: int = setting(BACKLOG, v.int_between(1, 65535), "listen(2) backlog (the kernel caps it at net.core.somaxconn)")


@dataclass(frozen=True)
class SupervisorConfig:
    """``[tcp.pool.supervisor]``: limits the master enforces on workers."""

    watch_tick: float = setting(1.0, v.duration_between("10ms", "1h"), "how often the master checks the limits below", v.format_duration)
    ttl: float = setting(0.0, v.duration, "recycle a worker older than this; 0 = never", v.format_duration)
    idle_ttl: float = setting(0.0, v.duration, "recycle a worker idle for this long; 0 = never", v.format_duration)
    max_worker_memory: int = setting(0, v.int_between(0, 1 << 20), "MB of RSS above which a worker is recycled; 0 = no limit")
    exec_ttl: float = setting(0.0, v.duration, "how long one event may run before its worker is killed; 0 = no limit", v.format_duration)


@dataclass(frozen=True)
class PoolConfig:
    """``[tcp.pool]``: the worker processes."""

    num_workers: int = setting(parse=v.int_between(1, MAX_WORKERS), factory=lambda: min(os.cpu_count() or 1, MAX_WORKERS),
                               doc="worker processes (default: number of CPUs)")
    max_connections: int = setting(0, v.int_between(0, 1_000_000),
                                   "open connections per worker; 0 = as many as the open-files limit allows")
    max_jobs: int = setting(0, v.int_between(0, 10**12), "events a worker handles before it is recycled; 0 = never")
    allocate_timeout: float = setting(60.0, _WORKER_TIMEOUT, "a worker must be ready this soon after it is started", v.format_duration)
    destroy_timeout: float = setting(60.0, _WORKER_TIMEOUT, "a stopping worker gets this long, then SIGKILL", v.format_duration)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)


@dataclass(frozen=True)
class TcpConfig:
    """``[tcp]``: the servers and their worker pool."""

    servers: tuple[ServerConfig, ...] = ()
    pool: PoolConfig = field(default_factory=PoolConfig)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: where and how the master and workers log."""

    level: str = setting("info", v.log_level, "debug, info, warning, error or critical")
    format: str = setting("text", v.log_format, '"text" (one readable line) or "json" (one object per line)')
    file: str = setting("", v.string, 'a file to append to; "" or "-" = standard error')


@dataclass(frozen=True)
class ControlConfig:
    """``[control]``: the management socket."""

    socket: str = setting("", v.string, "unix socket for the management commands (mode 0600); \"\" = PIDFILE.sock if a pidfile is set")


@dataclass(frozen=True)
class Config:
    """The whole effective configuration of one server."""

    app: str = setting("", v.app_spec, "the application, module:callable (the APP argument wins)")
    pidfile: str = setting("", v.string, "file the master writes its pid to")
    proc_name: str = setting("prefork-tcp", v.string, "first word of the process titles")
    user: str = setting("", v.user, "user the workers run as (the master must be root)")
    group: str = setting("", v.group, "group the workers run as")
    umask: int = setting(0o022, v.umask, "umask of the master and workers", lambda m: f"0o{m:03o}")
    tcp: TcpConfig = field(default_factory=TcpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    #: Set from the command line only.
    preload: bool = False
    daemon: bool = False
    source: str = ""

    @property
    def servers(self) -> tuple[ServerConfig, ...]:
        return self.tcp.servers

    @property
    def pool(self) -> PoolConfig:
        return self.tcp.pool


_CLI_ONLY = {"preload", "daemon", "source"}


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
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _CLI_ONLY and f.name != "name"}
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key(_join(path, key), key, list(fields)))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name == "servers":
            kwargs[name] = _build_servers(raw.get(name, {}), key_path)
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
            raise ConfigError(f'{server_path}.addr: missing: server {name!r} needs an address, as in addr = "tcp://127.0.0.1:8889"')
        server = _build(ServerConfig, table, server_path, name=name)
        other = seen.get(server.addr)
        if other is not None and not (server.addr.kind == "tcp" and server.addr.port == 0):
            raise ConfigError(f"{server_path}.addr: {v.brief(str(server.addr))} is already used by server {other!r}")
        seen[server.addr] = name
        servers.append(server)
    return tuple(servers)


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
        if f.name in _CLI_ONLY or f.name == "name":
            continue
        value = getattr(obj, f.name)
        if f.name == "servers":
            subtables.extend((_join(_join(path, "servers"), s.name), s) for s in value)
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
