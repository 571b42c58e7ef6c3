"""Logging set-up shared by the master and its workers: text or JSON lines, stderr or a file."""

from __future__ import annotations

import json
import logging
import sys
import time

from .config import LogConfig

_TEXT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S %z"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(config: LogConfig) -> None:
    """Route the ``prefork_tcp`` loggers (and the root logger) to the configured place."""
    if config.file in ("", "-"):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(config.file, mode="a", encoding="utf-8")
    handler.setFormatter(JsonFormatter() if config.format == "json" else logging.Formatter(_TEXT, _DATEFMT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level.upper())


class Throttle:
    """Warnings that would repeat (out of descriptors, a full worker) logged at most once
    per ``interval`` seconds for each kind."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}

    def warn(self, what: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(what, -self.interval) >= self.interval:
            self._last[what] = now
            self.logger.warning(message, *args)


def printable(text: str) -> str:
    """Return ``text`` with control and other unprintable characters escaped (``\\n``,
    ``\\x1b``), for text a client controls (peer names, application error messages), so
    it can never forge a line of the text log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def reopen() -> None:
    """Reopen log files (after logrotate moved them), as SIGUSR1 asks."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
