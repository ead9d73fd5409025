"""The house's layers, read from the imports themselves (ast, nothing imported): no import circle in
nemo_like, and components never import the recipes, nor the config machinery beyond its error types."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_like"

ALLOWED_CONFIG_MODULES = {"nemo_like.config.errors"}  # the error types every part may raise


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The nemo_like modules a file imports, at any depth of the file (function-level imports count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imported_modules(path, modules) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_components_do_not_import_recipes_or_the_config_machinery():
    wrong = set()
    for name, deps in import_graph().items():
        if not name.startswith("nemo_like.components."):
            continue
        for dep in deps:
            if dep.startswith("nemo_like.recipes") or (
                dep.startswith("nemo_like.config") and dep not in ALLOWED_CONFIG_MODULES
            ):
                wrong.add((name, dep))
    assert not wrong, sorted(wrong)


def test_the_walk_sees_function_level_imports():
    """The check is only as good as the walk: a deferred import inside a function is an import too."""
    graph = import_graph()
    assert "nemo_like._transformers.gguf_dense" in graph["nemo_like._transformers.embedded"]
