"""Importing the application callable named by ``module:callable``."""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable

App = Callable[..., object]


class AppLoadError(Exception):
    """The application could not be imported; the message says why (a traceback when the
    application's own code raised)."""


def load_app(spec: str) -> App:
    """Return the callable named by ``spec`` (``module:callable``; the callable defaults to ``main``)."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "main"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"cannot import application {spec!r}: no module named {exc.name!r}") from None
        raise AppLoadError(_traceback(spec)) from None
    except Exception:
        raise AppLoadError(_traceback(spec)) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"cannot import application {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise AppLoadError(f"application {spec!r} is not callable: it is a {type(obj).__name__}")
    return obj


def _traceback(spec: str) -> str:
    return f"error while importing application {spec!r}:\n{traceback.format_exc().rstrip()}"
