"""Which implementation runs: the compiled core or plain Python (``prefork_tcp/compiled.py``)."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prefork_tcp
from prefork_tcp import compiled

REPO = Path(__file__).resolve().parent.parent
BUILT = all(compiled.built(name) for name in compiled.CORE)
needs_build = pytest.mark.skipif(not BUILT, reason="the compiled core is not built for this interpreter")

REPORT = "import prefork_tcp, prefork_tcp.eventloop as e; print(prefork_tcp.implementation()); print(e.__file__)"


def run_python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != compiled.ENV}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, cwd=cwd, timeout=60, check=False)


def test_this_run_uses_what_its_environment_asks():
    """CI runs the suite both ways: the pure run must not be compiled, and the compiled run
    (where the core is built) must not silently fall back."""
    wanted_plain = os.environ.get(compiled.ENV, "") not in ("", "0")
    if wanted_plain or not BUILT:
        assert prefork_tcp.implementation().startswith("pure Python")
        assert prefork_tcp.api.__file__.endswith(".py")
    else:
        assert prefork_tcp.implementation() == "compiled"
        for name in compiled.CORE:
            assert not importlib.import_module(f"prefork_tcp.{name}").__file__.endswith(".py")


def test_the_plain_modules_run_where_cython_is_not_installed():
    """A plain install needs no Cython: the core's modules then take their plain branches."""
    hotpath = REPO / "scripts" / "hotpath.py"
    code = (
        "import runpy, sys; sys.modules['cython'] = None; "  # import cython fails, as without Cython
        f"sys.argv = ['hotpath', '--rounds', '50']; runpy.run_path({str(hotpath)!r}, run_name='__main__')"
    )
    result = run_python(code, env={compiled.ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert "ns of CPU per request" in result.stdout and f"pure Python: {compiled.ENV} is set" in result.stdout
    blocked = run_python("import sys; sys.modules['cython'] = None; import cython")
    assert "ModuleNotFoundError" in blocked.stderr  # the block works, so the run above did without it


@needs_build
def test_the_switch_runs_every_core_module_as_plain_python():
    result = run_python(
        REPORT + "; import sys; print(all(sys.modules['prefork_tcp.' + n].__file__.endswith('.py') for n in prefork_tcp.compiled.CORE))",
        env={compiled.ENV: "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"pure Python: {compiled.ENV} is set", str(REPO / "prefork_tcp" / "eventloop.py"), "True"]
    assert result.stderr == ""  # asked for: no warning


@needs_build
@pytest.mark.parametrize("value", ["", "0"])
def test_an_empty_or_zero_switch_keeps_the_compiled_core(value):
    result = run_python(REPORT, env={compiled.ENV: value})
    assert result.returncode == 0, result.stderr
    implementation, path = result.stdout.splitlines()
    assert implementation == "compiled" and path.endswith(importlib.machinery.EXTENSION_SUFFIXES[0])


def copy_of_package(tmp_path: Path) -> Path:
    """A source tree of its own (setup.py beside the package), with the built core if any."""
    shutil.copytree(REPO / "prefork_tcp", tmp_path / "prefork_tcp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", tmp_path / "setup.py")
    return tmp_path


@needs_build
def test_a_declaration_file_newer_than_the_build_makes_the_modules_cimporting_it_stale(tmp_path):
    tree = copy_of_package(tmp_path)
    later = time.time() + 10
    os.utime(tree / "prefork_tcp" / "csysio.pxd", (later, later))  # the C of sysio and the loop
    result = run_python(REPORT, cwd=tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "pure Python: compiled sysio, eventloop older than the source: rebuild with pip install"


@needs_build
def test_a_compiled_module_older_than_its_source_is_not_used_and_the_warning_says_so(tmp_path):
    tree = copy_of_package(tmp_path)
    assert run_python(REPORT, cwd=tree).stdout.splitlines()[0] == "compiled"
    source = tree / "prefork_tcp" / "framing.py"
    later = time.time() + 10
    os.utime(source, (later, later))  # edited after the build
    result = run_python(REPORT, cwd=tree)
    assert result.returncode == 0, result.stderr
    reason = "compiled framing older than the source: rebuild with pip install"
    assert result.stdout.splitlines() == [f"pure Python: {reason}", str(tree / "prefork_tcp" / "eventloop.py")]
    assert f"RuntimeWarning: prefork_tcp runs its plain Python modules: {reason}" in result.stderr


@needs_build
def test_a_core_missing_one_module_runs_wholly_as_plain_python(tmp_path):
    """The compiled modules know each other's types: a mix could not load."""
    tree = copy_of_package(tmp_path)
    (tree / "prefork_tcp" / compiled.built("connection").name).unlink()  # type: ignore[union-attr]
    result = run_python(REPORT + "; import prefork_tcp.api as a; print(a.__file__)", cwd=tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "pure Python: connection not built",
        str(tree / "prefork_tcp" / "eventloop.py"),
        str(tree / "prefork_tcp" / "api.py"),
    ]


def test_version_and_check_name_the_implementation(tmp_path):
    version = subprocess.run([sys.executable, "-m", "prefork_tcp", "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == f"prefork-tcp {prefork_tcp.__version__} ({prefork_tcp.implementation()})"
    check = subprocess.run(
        [sys.executable, "-m", "prefork_tcp", "check", "prefork_tcp.examples.ping:main"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    assert check.stdout.splitlines()[0] == f"# prefork-tcp {prefork_tcp.__version__}, {prefork_tcp.implementation()}"


def test_every_core_module_has_its_declarations():
    for name in compiled.CORE:
        assert (REPO / "prefork_tcp" / f"{name}.pxd").is_file(), f"{name} has no .pxd: it would compile untyped"
