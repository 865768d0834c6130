"""The package's layering, checked from its source (docs/architecture.md describes it).

* The import graph that runs at import time (module-level imports, not those under
  ``TYPE_CHECKING``) has no cycle.
* The client never imports the service: ``qdispatch.server`` may use the client's wire
  code (the Qobj reader and writer, the encoding, the vocabulary), never the other way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qdispatch

PACKAGE_DIR = Path(qdispatch.__file__).parent
PACKAGE = "qdispatch"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: the module body and the blocks
    (``try``, ``if`` other than ``TYPE_CHECKING``) directly in it, not function bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                pending.extend(block)
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            pending.extend(node.body)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package modules an import statement loads (beyond their parent packages)."""
    is_package = MODULES[module].name == "__init__.py"
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = {prefix}
        names |= {f"{prefix}.{alias.name}" for alias in node.names}
    return {n for n in names if n in MODULES and n not in (PACKAGE, module)}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in _runtime_imports(tree):
            edges |= _targets(module, node)
        graph[module] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_graph_is_read() -> None:
    graph = import_graph()
    assert "qdispatch.server.store" in graph
    assert "qdispatch.constants" in graph["qdispatch.server.store"]


def test_no_import_cycle() -> None:
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_cli_imports_the_app() -> None:
    """The service's modules build on ``deps``/``service``, never on ``app`` (which only
    assembles them): any import of it, even inside a function, is the CLI's alone."""
    app = "qdispatch.server.app"
    for module, path in MODULES.items():
        if module == "qdispatch.cli.serve":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert app not in _targets(module, node), f"{module} imports {app}"


@pytest.mark.parametrize(
    "module",
    sorted(m for m in MODULES if not m.startswith("qdispatch.server") and m != PACKAGE),
)
def test_client_never_imports_the_service(module: str) -> None:
    """Any import, even one inside a function: the client does not reach into the
    service's modules (``qdispatch serve``, ``token`` and ``gc`` are the CLI's)."""
    if module in ("qdispatch.cli.serve", "qdispatch.cli.admin"):
        pytest.skip("serve starts the service; token and gc open its store")
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(module, node) | (
                {node.module} if isinstance(node, ast.ImportFrom) and node.module else set()
            ):
                assert not target.startswith(("qdispatch.server", "server")), (
                    f"{module} imports {target} (line {node.lineno})"
                )
