"""Build: the package, and its compiled core when it can be built (``prefork_tcp/compiled.py``).

Cython compiles the core's modules from their own ``.py`` files, typed by the ``.pxd`` files
beside them. Nothing else differs: without Cython, without a C compiler, on another
interpreter, or with ``PREFORK_TCP_NO_EXTENSIONS=1`` set at install, the package installs as
plain Python and runs the same. ``prefork-tcp --version`` names the implementation in use.
"""

from __future__ import annotations

import ast
import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def core() -> tuple[str, ...]:
    """``CORE`` of prefork_tcp/compiled.py, read without importing the package."""
    tree = ast.parse(Path(__file__).with_name("prefork_tcp").joinpath("compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CORE" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("prefork_tcp/compiled.py has no CORE")


CORE = core()
ENV = "PREFORK_TCP_NO_EXTENSIONS"


def say(message: str) -> None:
    print(f"prefork_tcp: {message}", file=sys.stderr)


def extensions() -> list[Extension]:
    """The core as extension modules, or none when they cannot be built here."""
    if os.environ.get(ENV, "") not in ("", "0"):
        say(f"{ENV} is set: installing the plain Python modules only")
        return []
    if platform.python_implementation() != "CPython":
        say(f"no compiled core for {platform.python_implementation()}: installing the plain Python modules only")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        say("Cython is not installed: installing the plain Python modules only")
        return []
    modules = [Extension(f"prefork_tcp.{name}", [f"prefork_tcp/{name}.py"], optional=True) for name in CORE]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={"binding": True, "embedsignature": True},
        quiet=True,
    )


class OptionalBuildExt(build_ext):
    """Builds the core; when it cannot (no compiler), says so and leaves the plain modules."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all: distutils fails before any extension
            say(f"could not build the compiled core ({exc}): installing the plain Python modules only")
            return
        if self.extensions:
            say("built the compiled core: " + ", ".join(ext.name for ext in self.extensions))

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            say(f"could not compile {ext.name} ({exc}): the plain Python modules will run")
            raise


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
