"""The package's layout: an import graph without cycles, and a leaf for the vocabulary."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "prefork_tcp"


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports, TYPE_CHECKING imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefork_tcp."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def test_the_import_graph_has_no_cycle():
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name) :] + [name]))
        if name in done:
            return
        for imported in sorted(edges[name]):
            visit(imported, path + [name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_the_vocabulary_is_a_leaf_that_the_loop_uses_directly():
    edges = graph()
    assert edges["events"] == set()
    for module in ("connset", "eventloop", "worker", "masterlink", "connection", "accepting"):
        assert "api" not in edges[module], f"{module} imports the public facade"
