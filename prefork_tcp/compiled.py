"""Which implementation runs: the compiled core, or the same modules as plain Python.

The per-message path (``CORE``) can be compiled by Cython from its own ``.py`` files, with
the ``.pxd`` files beside them declaring the types (``setup.py``). Python's import system
prefers an extension module to a source file of the same name, so a built core is used
when it is there. It is used only whole: the compiled modules know each other's types, so
a mix of compiled and plain modules could not load.

The plain modules run instead when:

- ``PREFORK_TCP_NO_EXTENSIONS`` is set to anything but ``""`` or ``0``;
- any module of the core was not built for this interpreter (no compiler at install, an
  interpreter other than CPython);
- in a source tree (an editable install), any compiled module is older than its source
  (its ``.py``, its ``.pxd`` or a ``.pxd`` it cimports), with a warning: the code that
  runs is the code on disk. (An installed package is not
  edited; a wheel's files may be written in any order, so their times tell nothing.)

``install()`` runs first thing in ``prefork_tcp/__init__.py``; ``implementation()`` names
the result, for ``prefork-tcp --version`` and ``prefork-tcp check``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

#: The modules of the compiled core, in import order.
CORE = ("uuids", "sysio", "scoreboard", "framing", "connection", "eventloop", "api")
ENV = "PREFORK_TCP_NO_EXTENSIONS"
PACKAGE = Path(__file__).resolve().parent

#: Why the plain modules run ("" while the compiled ones do); set by ``install()``.
_reason = "not decided yet"


def built(name: str) -> Path | None:
    """The extension module of ``name`` built for this interpreter, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = PACKAGE / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _decide() -> str:
    """Why the plain modules must run; "" when the compiled core can."""
    if os.environ.get(ENV, "") not in ("", "0"):
        return f"{ENV} is set"
    missing = [name for name in CORE if built(name) is None]
    if missing:
        return "not built for this interpreter" if len(missing) == len(CORE) else f"{', '.join(missing)} not built"
    source_tree = (PACKAGE.parent / "setup.py").is_file()
    stale = [name for name in CORE if source_tree and _newest_source(name) > built(name).stat().st_mtime]  # type: ignore[union-attr]
    if stale:
        return f"compiled {', '.join(stale)} older than the source: rebuild with pip install"
    return ""


#: ``cimport`` of a module of the package, in a ``.pxd`` or a compiled ``.py`` file.
_CIMPORT = re.compile(r"^\s*from (?:cython\.cimports\.)?prefork_tcp\.(\w+) c?import", re.MULTILINE)


def _newest_source(name: str) -> float:
    """When the newest file a module is compiled from changed: its ``.py``, its ``.pxd``
    and the ``.pxd`` files it cimports, as Cython rebuilds it on any of them."""
    newest, seen, todo = 0.0, set(), [f"{name}.py", f"{name}.pxd"]
    while todo:
        path = PACKAGE / todo.pop()
        if path.name in seen or not path.is_file():
            continue
        seen.add(path.name)
        newest = max(newest, path.stat().st_mtime)
        todo.extend(f"{module}.pxd" for module in _CIMPORT.findall(path.read_text()))
    return newest


class PlainCore(importlib.abc.MetaPathFinder):
    """Finds the ``.py`` file of a core module, where the extension would win otherwise."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in CORE:
            return None
        return importlib.util.spec_from_file_location(fullname, PACKAGE / f"{name}.py")


def install() -> None:
    """Make the core's imports load the plain modules when they must (see the module doc)."""
    global _reason
    _reason = _decide()
    if _reason and any(built(name) for name in CORE):
        if not _reason.startswith(ENV):
            warnings.warn(f"prefork_tcp runs its plain Python modules: {_reason}", RuntimeWarning, stacklevel=3)
        if not any(isinstance(finder, PlainCore) for finder in sys.meta_path):
            sys.meta_path.insert(0, PlainCore())


def implementation() -> str:
    """``"compiled"`` or ``"pure Python"`` (with the reason, when a built core is not used)."""
    from . import api

    if api.__file__ and not api.__file__.endswith(".py"):
        return "compiled"
    return "pure Python" if _reason in ("", "not built for this interpreter") else f"pure Python: {_reason}"
