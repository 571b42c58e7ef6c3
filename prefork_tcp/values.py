"""Parsers for single config values. Each returns the value or raises ``ValueError``
with the text that follows ``key:`` in the error (``expected ..., got ...``). The bounded
ones are objects that also state their bounds, for the docs and the command line."""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .sockets import Address, parse_address

Parser = Callable[[Any], Any]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
#: unit: (multiplier, divisor) to seconds.
_UNITS = {"ns": (1, 10**9), "us": (1, 10**6), "µs": (1, 10**6), "ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_APP_SPEC = re.compile(r"\A[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?\Z")

#: The longest duration any setting takes: a week.
MAX_DURATION = "168h"


def show(value: Any, depth: int | None = None) -> str:
    """Return a value as TOML would write it, for ``check``; tables and arrays nested deeper than ``depth`` as ``...``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (dict, list)):
        inner = depth if depth is None else depth - 1
        if inner is not None and inner < 0:
            items = "..."
        elif isinstance(value, dict):
            items = ", ".join(f"{toml_key(k)} = {show(v, inner)}" for k, v in value.items())
        else:
            items = ", ".join(show(v, inner) for v in value)
        return f"{{{items}}}" if isinstance(value, dict) else f"[{items}]"
    return repr(value)


def brief(value: Any, limit: int = 80) -> str:
    """Return ``value`` as TOML would write it, cut to about ``limit`` characters, for an error message."""
    text = show(value, depth=3)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def toml_key(key: str) -> str:
    """Return ``key`` as TOML writes it: bare if it can be, else quoted."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(text: str) -> str:
    """Return ``text`` as a TOML basic string."""
    out = json.dumps(text, ensure_ascii=False)
    return re.sub("\x7f", "\\\\u007f", out)


def _expected(what: str, value: Any) -> ValueError:
    return ValueError(f"expected {what}, got {brief(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class IntBetween:
    """A parser of integers from ``lo`` to ``hi``; its errors name the bound broken."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.bounds = f"{lo} to {hi}"
        self._at_least = "a positive integer" if lo == 1 else f"an integer >= {lo}"

    def __call__(self, value: Any) -> int:
        if not _is_int(value) or value < self.lo:
            raise _expected(self._at_least, value)
        if value > self.hi:
            raise _expected(f"an integer from {self.lo} to {self.hi}", value)
        return int(value)


def _seconds(value: Any) -> float | None:
    """Return seconds from ``"1m30s"``-style text or a number, unbounded; None if it is neither.

    Unbounded: text may sum to infinity, and an int is returned as it is because it may be
    too large for a float. Callers compare before they convert.
    """
    if _is_int(value) or isinstance(value, float):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        multiplier, divisor = _UNITS[match.group(2)]
        total += float(match.group(1)) * multiplier / divisor  # dividing keeps "3600000ms" exactly 1h
        pos = match.end()
    return total if text and pos == len(text) else None


class DurationBetween:
    """A parser of durations from ``lo`` to ``hi`` (Go-style text), and of 0 if ``or_zero``; gives seconds."""

    def __init__(self, lo: str, hi: str, *, or_zero: bool = False) -> None:
        low, high, longest = _seconds(lo), _seconds(hi), _seconds(MAX_DURATION)
        assert low is not None and high is not None and longest is not None and 0 <= low <= high <= longest, (lo, hi)
        self.low, self.high, self.or_zero = low, high, or_zero
        self.bounds = f"{'0 or ' if or_zero else ''}{lo} to {hi}"
        self._expected = f"{'0 or ' if or_zero else ''}a duration from {lo} to {hi}"

    def __call__(self, value: Any) -> float:
        seconds = _seconds(value)
        if seconds is None:
            raise _expected(f'{self._expected}, written "500ms", "60s", "1m30s" or as a number of seconds', value)
        if not (self.or_zero and seconds == 0) and not self.low <= seconds <= self.high:  # False for NaN
            raise _expected(self._expected, value)
        return float(seconds) or 0.0  # not -0.0


#: Any duration up to ``MAX_DURATION``, 0 included.
duration = DurationBetween("0s", MAX_DURATION)


def format_duration(seconds: float) -> str:
    """Return Go-style text for a number of seconds (``"1m30s"``, ``"500ms"``, ``"0s"``)."""
    if seconds and seconds < 1:
        return f"{_decimal(seconds * 1000)}ms"
    whole_minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if rest or not text:
        text += f"{_decimal(rest)}s"
    return text


def format_delimiter(value: bytes) -> str:
    return value.decode("utf-8")


def format_megabytes(value: int) -> float:
    return value / (1024 * 1024)


def format_umask(value: int) -> str:
    return f"0o{value:03o}"


def _decimal(number: float) -> str:
    """Return ``number`` with up to nine decimals and never an exponent, which durations cannot hold."""
    return f"{number:.9f}".rstrip("0").rstrip(".")


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def address(value: Any) -> Address:
    if not isinstance(value, str):
        raise _expected('an address such as "tcp://127.0.0.1:8889"', value)
    try:
        return parse_address(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, got {brief(value)}") from None


def metrics_address(value: Any) -> Address | None:
    """A TCP address to serve the metrics at, or "" (None) for none."""
    if value == "":
        return None
    where = address(value)
    if where.kind != "tcp":
        raise ValueError(f'expected a TCP address such as "127.0.0.1:9100" (Prometheus scrapes over TCP), got {brief(value)}')
    return where


def redis_url(value: Any) -> str:
    """A Redis address: redis://[[user]:password@]host[:port][/db], rediss://..., or unix:///path[?db=N].

    Errors show the address without its user and password (``redacted``).
    """
    if value == "":
        return value
    if not isinstance(value, str):
        raise _expected('a Redis address such as "redis://127.0.0.1:6379/0"', value)
    shown = brief(redacted(value))
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port  # ValueError when not a number from 0 to 65535
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
    except ValueError as exc:
        raise ValueError(f"{str(exc).replace(value, redacted(value))}, got {shown}") from None
    if url.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected redis://, rediss:// or unix://, got {shown}")
    if set(query) - {"db"}:
        raise ValueError(f"the only query an address takes is ?db=N (timeouts come from the storage's keys), got {shown}")
    if url.scheme == "unix":
        if not url.path:
            raise ValueError(f"a unix socket address needs a path, as in unix:///run/redis.sock, got {shown}")
        db = query.get("db", ["0"])[-1]
    else:
        if not url.hostname:
            raise ValueError(f"expected a host, as in redis://127.0.0.1:6379/0, got {shown}")
        if port == 0:
            raise ValueError(f"port 0 is no Redis server's, got {shown}")
        if "db" in query:
            raise ValueError(f"the database goes in the path, as in redis://127.0.0.1:6379/0, got {shown}")
        db = url.path.strip("/") or "0"
    if not db.isdigit() or int(db) > 1_000_000:
        raise ValueError(f"the database must be a number, as in redis://127.0.0.1:6379/0, got {shown}")
    return value


def redacted(url: str) -> str:
    """A Redis address as it may be shown: without user, password or query."""
    return re.sub(r"//[^/]*@", "//", url.partition("?")[0])


def delimiter(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _expected('a string such as "\\r\\n" ("" for stream mode)', value)
    return value.encode("utf-8")


class MegabytesUpTo:
    """A parser of a number of megabytes above 0 and at most ``hi``, giving bytes (RoadRunner's ``read_buf_size``)."""

    def __init__(self, hi: int) -> None:
        self.hi = hi
        self.bounds = f"above 0, at most {hi}"

    def __call__(self, value: Any) -> int:
        if not (_is_int(value) or isinstance(value, float)) or not 0 < value <= self.hi:  # False for NaN
            raise _expected(f"a number of megabytes above 0 and at most {self.hi}", value)
        return max(1, int(value * 1024 * 1024))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(value: Any) -> tuple[Network, ...]:
    """A list of addresses or CIDR blocks ("10.0.0.0/8", "::1"), as networks."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _expected('a list of addresses or CIDR blocks such as ["10.0.0.0/8", "::1"]', value)
    found = []
    for item in value:
        try:
            found.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"expected addresses or CIDR blocks, got {brief(item)}") from None
    return tuple(found)


def format_networks(value: tuple[Network, ...]) -> list[str]:
    return [str(net.network_address) if net.num_addresses == 1 else str(net) for net in value]


class OneOf:
    """A parser of one of ``choices`` (of any case if ``fold_case``, giving it in lower case)."""

    def __init__(self, choices: tuple[str, ...], expected: str, *, fold_case: bool = False) -> None:
        self.choices, self.fold_case, self._expected = choices, fold_case, expected
        *most, last = [toml_string(choice) for choice in choices]
        self.bounds = f"{', '.join(most)} or {last}"

    def __call__(self, value: Any) -> str:
        if self.fold_case:
            if not isinstance(value, str) or value.lower() not in self.choices:
                raise _expected(self._expected, value)
            return value.lower()
        if value not in self.choices:
            raise _expected(self._expected, value)
        return str(value)


log_level = OneOf(_LOG_LEVELS, "one of " + ", ".join(_LOG_LEVELS), fold_case=True)
log_format = OneOf(("text", "json"), '"text" or "json"')
kv_driver = OneOf(("sqlite", "redis"), '"sqlite" or "redis"')
proxy_protocol = OneOf(("off", "v1", "v2", "auto"), '"off", "v1", "v2" or "auto"')


def bounds(parse: Parser) -> str:
    """Return the bounds a parser checks, as text for the docs ("1 to 256", "10ms to 24h"); "" if it states none."""
    return str(getattr(parse, "bounds", ""))


def app_spec(value: Any) -> str:
    if value == "":
        return value  # unset: the APP argument must name it
    if not isinstance(value, str) or not _APP_SPEC.match(value):
        raise _expected('an application as "module:callable"', value)
    return value


def umask(value: Any) -> int:
    """Return a umask from an integer (TOML ``0o022``) or octal text (``"022"``)."""
    if isinstance(value, str):
        try:
            value = int(value.removeprefix("0o"), 8)
        except ValueError:
            raise _expected("an octal umask such as 0o022", value) from None
    if not _is_int(value) or not 0 <= value <= 0o777:
        raise _expected("an octal umask such as 0o022", value)
    return value


def user(value: Any) -> str:
    return _account(value, "user", "uid", pwd.getpwuid, pwd.getpwnam)


def group(value: Any) -> str:
    return _account(value, "group", "gid", grp.getgrgid, grp.getgrnam)


def _account(value: Any, kind: str, id_name: str, by_id: Callable[[int], Any], by_name: Callable[[str], Any]) -> str:
    """Return a user or group given by name or number, checked to exist ("" = unchanged)."""
    if _is_int(value):
        value = str(value)
    if not isinstance(value, str):
        raise _expected(f"a {kind} name or {id_name}", value)
    if value:
        try:
            by_id(int(value)) if value.isascii() and value.isdigit() else by_name(value)
        except (KeyError, ValueError, OverflowError):  # ValueError: a NUL in the name
            raise ValueError(f"no such {kind}, got {brief(value)}") from None
    return value


def expand_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Return ``value`` with ``${VAR}`` and ``${VAR:-default}`` expanded in every string."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    return value
