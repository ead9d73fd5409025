"""The parameters of a ``_target_`` read from its source file, without importing it.

Importing torch and transformers takes seconds; reading one Python file takes milliseconds. So
a recipe's built sections (``optimizer``, ``dataset``, ...) are checked against the target's
signature as written in its source: an unknown keyword or a bare ``--optimizer.lr`` (true where
a float belongs) is reported before anything heavy loads. Whatever cannot be read this way
(C extensions, lazy modules, dynamic signatures) returns None and is checked when built.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from dataclasses import dataclass

__all__ = ["StaticSignature", "static_signature"]


@dataclass(frozen=True)
class StaticSignature:
    """Parameter names with their annotation text; ``var_keyword`` when ``**kwargs`` takes any name."""

    qualname: str
    parameters: dict[str, str | None]
    var_keyword: bool


@functools.lru_cache(maxsize=256)
def _parse(path: str) -> ast.Module | None:
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _module_file(name: str) -> tuple[str, bool] | None:
    """(source file, is a package) of a dotted module name, found on disk; only the top package is looked up."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0]) if "." not in parts[0] else None
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path, is_pkg = spec.origin, bool(spec.submodule_search_locations)
    for part in parts[1:]:
        if not is_pkg:
            return None
        base = os.path.dirname(path)
        if os.path.isfile(os.path.join(base, part, "__init__.py")):
            path, is_pkg = os.path.join(base, part, "__init__.py"), True
        elif os.path.isfile(os.path.join(base, part + ".py")):
            path, is_pkg = os.path.join(base, part + ".py"), False
        else:
            return None
    return path, is_pkg


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _lookup(module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
    """The definition of ``name`` in ``module`` (following ``from x import name``): (its module, node)."""
    if depth > 8:
        return None
    found = _module_file(module)
    if found is None:
        return None
    path, is_pkg = found
    if is_pkg and _module_file(f"{module}.{name}") is not None:
        return f"{module}.{name}", ast.Module(body=[], type_ignores=[])
    tree = _parse(path)
    if tree is None:
        return None
    for node in reversed(tree.body):  # the last binding wins
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, is_pkg, node)
                    return _lookup(source, alias.name, depth + 1)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return None  # computed at import time: only the import knows
    lazy = _lazy_exports(tree).get(name)  # a package's ``_EXPORTS = {"Name": "module"}`` loaded on first use
    return _lookup(lazy, name, depth + 1) if lazy else None


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            try:
                table = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, str)}
    return {}


def _resolve(target: str) -> tuple[str, ast.AST, ast.ClassDef | None] | None:
    """Walk ``a.b.C.method``: modules on disk, then definitions; returns (module, node, owning class)."""
    parts = target.replace(":", ".").split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if _module_file(module) is None:
            continue
        found = _lookup(module, parts[cut])
        if found is None:
            return None
        owner: ast.ClassDef | None = None
        module, node = found
        for attr in parts[cut + 1:]:
            if isinstance(node, ast.Module):  # a submodule reached through its package
                found = _lookup(module, attr)
                if found is None:
                    return None
                module, node = found
                continue
            if not isinstance(node, ast.ClassDef):
                return None
            method = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == attr), None)
            if method is None:
                return None
            owner, node = node, method
        return module, node, owner
    return None


def _function_signature(node: ast.FunctionDef, qualname: str, bound: bool) -> StaticSignature | None:
    if any(not (isinstance(d, ast.Name) and d.id in ("classmethod", "staticmethod")) for d in node.decorator_list):
        return None  # a decorator may change what the call accepts
    args = node.args
    positional = args.posonlyargs + args.args
    if bound and not any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list):
        positional = positional[1:]
    params = {a.arg: ast.unparse(a.annotation) if a.annotation else None for a in positional + args.kwonlyargs}
    return StaticSignature(qualname, params, var_keyword=args.kwarg is not None)


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        name = d.func if isinstance(d, ast.Call) else d
        if (isinstance(name, ast.Name) and name.id == "dataclass") or (
            isinstance(name, ast.Attribute) and name.attr == "dataclass"
        ):
            return True
    return False


def _class_signature(module: str, node: ast.ClassDef, qualname: str, depth: int = 0) -> StaticSignature | None:
    if depth > 6 or any(isinstance(d, ast.Call) and not _is_dataclass(node) for d in node.decorator_list):
        return None
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        return _function_signature(init, qualname, bound=True)
    if _is_dataclass(node) and not node.bases:
        params = {
            n.target.id: ast.unparse(n.annotation)
            for n in node.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and "ClassVar" not in ast.unparse(n.annotation)
        }
        return StaticSignature(qualname, params, var_keyword=False)
    if len(node.bases) != 1 or node.keywords or _is_dataclass(node):
        return None
    base = node.bases[0]
    found = _lookup(module, base.id) if isinstance(base, ast.Name) else None
    if found is None or not isinstance(found[1], ast.ClassDef):
        return None
    return _class_signature(found[0], found[1], qualname, depth + 1)


@functools.lru_cache(maxsize=256)
def static_signature(target: str) -> StaticSignature | None:
    """The parameters ``target`` accepts as its source declares them, or None when only an import can tell."""
    resolved = _resolve(target)
    if resolved is None:
        return None
    module, node, owner = resolved
    if isinstance(node, ast.ClassDef):
        return _class_signature(module, node, target)
    if isinstance(node, ast.FunctionDef):
        return _function_signature(node, target, bound=owner is not None)
    return None
