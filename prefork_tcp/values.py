"""Parsers for single config values. Each returns the value or raises ``ValueError``
with the text that follows ``key:`` in the error (``expected ..., got ...``)."""

from __future__ import annotations

import grp
import json
import math
import os
import pwd
import re
from collections.abc import Callable
from typing import Any

from .sockets import Address, parse_address

Parser = Callable[[Any], Any]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")


def show(value: Any) -> str:
    """Return a value as TOML would write it, for error messages and ``check``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    return repr(value)


def toml_string(text: str) -> str:
    """Return ``text`` as a TOML basic string."""
    out = json.dumps(text, ensure_ascii=False)
    return re.sub("\x7f", "\\\\u007f", out)


def _expected(what: str, value: Any) -> ValueError:
    return ValueError(f"expected {what}, got {show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise _expected("a positive integer", value)
    return value


def non_negative_int(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise _expected("an integer >= 0", value)
    return value


def duration(value: Any) -> float:
    """Return seconds from ``"1m30s"``-style text or a number of seconds."""
    if (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise _expected('a duration such as "500ms", "60s", "1m30s" or a number of seconds', value)


def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise _expected("a duration above zero", value)
    return seconds


def format_duration(seconds: float) -> str:
    """Return Go-style text for a number of seconds (``"1m30s"``, ``"500ms"``, ``"0s"``)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole_minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if rest or not text:
        text += f"{rest:g}s"
    return text


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
        raise ValueError(f"{exc}, got {show(value)}") from None


def delimiter(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _expected('a string such as "\\r\\n" ("" for stream mode)', value)
    return value.encode("utf-8")


def megabytes(value: Any) -> int:
    """Return bytes for a positive number of megabytes (RoadRunner's ``read_buf_size``)."""
    if not (_is_int(value) or isinstance(value, float)) or not 0 < value <= 1024:
        raise _expected("a number of megabytes above 0 and at most 1024", value)
    return max(1, int(value * 1024 * 1024))


def log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
        raise _expected("one of " + ", ".join(_LOG_LEVELS), value)
    return value.lower()


def log_format(value: Any) -> str:
    if value not in ("text", "json"):
        raise _expected('"text" or "json"', value)
    return value  # type: ignore[no-any-return]


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
            by_id(int(value)) if value.isdigit() else by_name(value)
        except KeyError:
            raise ValueError(f"no such {kind}, got {show(value)}") from None
    return value


def expand_env(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Return ``value`` with ``${VAR}`` and ``${VAR:-default}`` expanded in every string."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    return value
