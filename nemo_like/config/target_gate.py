"""The gate that turns a `_target_` import path into an object.

Because the YAML decides what gets imported and called, resolution goes through an
allow-list of packages and a deny-list of their code-fetching parts: a recipe from the
internet must not be able to run `os.system`. `path/to/file.py:fn` targets, and modules
outside the list, need the user's explicit opt-in (NEMO_LIKE_ENABLE_USER_MODULES=1).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from nemo_like.config.errors import ConfigError
from nemo_like.config.errors import did_you_mean as _did_you_mean

__all__ = ["ALLOWED_MODULE_PREFIXES", "DENIED_TARGET_PREFIXES", "USER_MODULES_ENV", "resolve_target"]

# Top-level packages (or dotted prefixes) a `_target_` may import. Extend with
# `target_gate.ALLOWED_MODULE_PREFIXES += ("my_pkg",)`; it is read at every resolution.
ALLOWED_MODULE_PREFIXES: tuple[str, ...] = (
    "nemo_like", "torch", "torchdata", "transformers", "peft", "datasets", "safetensors",
)
# Parts of allowed packages that exist to fetch, compile or launch code; refused too.
DENIED_TARGET_PREFIXES: tuple[str, ...] = (
    "torch.hub", "torch.utils.cpp_extension", "torch.utils.collect_env", "torch.utils.hipify",
    "torch.ops", "torch.classes", "torch.package", "torch.distributed.run",
    "torch.distributed.launch", "torch.distributed.elastic", "torch.distributed.rpc",
    "transformers.dynamic_module_utils", "transformers.commands", "datasets.commands",
)
# Setting this to 1 lifts the gate: any module and `path/to/file.py:fn` targets import.
USER_MODULES_ENV = "NEMO_LIKE_ENABLE_USER_MODULES"


def _user_modules_enabled() -> bool:
    return os.environ.get(USER_MODULES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _check_module_allowed(module_name: str, key: str, target: str) -> None:
    """Refuse a module (by its real name) outside the allow-list or inside the deny-list."""
    if _user_modules_enabled():
        return
    if not _matches(module_name, ALLOWED_MODULE_PREFIXES):
        top = module_name.split(".")[0]
        raise ConfigError(
            f"{key}: refusing to import {target!r}: package '{top}' is not allow-listed "
            f"({', '.join(ALLOWED_MODULE_PREFIXES)}); set {USER_MODULES_ENV}=1 to allow "
            f"other modules{_did_you_mean(top, list(ALLOWED_MODULE_PREFIXES))}"
        )
    if _matches(module_name, DENIED_TARGET_PREFIXES):
        raise ConfigError(
            f"{key}: refusing to import {target!r}: '{module_name}' can fetch or run "
            f"arbitrary code; set {USER_MODULES_ENV}=1 to allow it"
        )


def resolve_target(target: Any, key: str = "_target_") -> Any:
    """Resolve a `_target_`-style import path through the gate; callables pass through."""
    if not isinstance(target, str):
        if callable(target):
            return target
        raise ConfigError(f"{key}: expected an import path string, got {target!r}")
    text = target.strip()
    if not text:
        raise ConfigError(f"{key}: empty import path")
    if ":" in text:
        location, _, attrs = text.rpartition(":")
        if location.endswith(".py") or "/" in location or os.sep in location:
            return _resolve_file_target(location, attrs, key, text)
        return _resolve_dotted(location.split("."), attrs.split("."), key, text)
    return _resolve_dotted(text.split("."), None, key, text)


def _check_components(parts: list[str], key: str, target: str, allow_private: bool) -> None:
    for part in parts:
        if not part.isidentifier():
            raise ConfigError(f"{key}: {target!r} is not a valid import path ('{part}')")
        if part.startswith("__") or (part.startswith("_") and not allow_private):
            raise ConfigError(
                f"{key}: refusing {target!r}: private component '{part}' cannot be used "
                f"in a target path"
            )


def _resolve_file_target(location: str, attrs: str, key: str, target: str) -> Any:
    """Load `path/to/file.py:fn` as a module; only with user modules enabled."""
    if not _user_modules_enabled():
        raise ConfigError(
            f"{key}: refusing file target {target!r}; set {USER_MODULES_ENV}=1 to load "
            f"code from files"
        )
    parts = attrs.split(".")
    _check_components(parts, key, target, allow_private=False)
    file = Path(location).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"{key}: file '{location}' of target {target!r} does not exist")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", file.stem)
    name = f"nemo_like_user_{stem}_{digest}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{key}: cannot load '{location}' of target {target!r} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise ConfigError(
                f"{key}: running '{location}' for target {target!r} failed with "
                f"{type(err).__name__}: {err}"
            ) from err
    return _walk_attributes(module, parts, key, target, location)


def _resolve_dotted(module_parts: list[str], attrs: list[str] | None, key: str, target: str) -> Any:
    """Import the longest module prefix of the path, then walk attributes, gate at each step."""
    top = module_parts[0]
    _check_components(module_parts + (attrs or []), key, target, allow_private=True)
    private = [p for p in module_parts + (attrs or []) if p.startswith("_")]
    if private and top != "nemo_like":
        raise ConfigError(
            f"{key}: refusing {target!r}: private component '{private[0]}' cannot be used "
            f"in a target path"
        )
    _check_module_allowed(".".join(module_parts), key, target)
    module = _import(top, key, target)
    obj: Any = module
    for i, part in enumerate(module_parts[1:], start=1):
        obj = _step(obj, part, key, target, ".".join(module_parts[:i]))
    if attrs is not None:
        obj = _walk_attributes(obj, attrs, key, target, ".".join(module_parts))
    _check_final(obj, key, target)
    return obj


def _import(name: str, key: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            parent, _, leaf = name.rpartition(".")
            hint = ""
            if parent and parent in sys.modules:
                hint = _did_you_mean(leaf, _names_in(sys.modules[parent]), parent + ".")
            elif not parent:
                hint = _did_you_mean(name, list(ALLOWED_MODULE_PREFIXES))
            raise ConfigError(
                f"{key}: cannot resolve {target!r}: no module '{name}'{hint}"
            ) from None
        raise ConfigError(
            f"{key}: importing '{name}' for {target!r} failed: missing dependency "
            f"'{err.name}' ({err})"
        ) from err
    except Exception as err:
        raise ConfigError(
            f"{key}: importing '{name}' for {target!r} failed with {type(err).__name__}: {err}"
        ) from err


def _names_in(obj: Any) -> list[str]:
    """Public attribute names of `obj`, plus its submodules when it is a package."""
    names = [n for n in dir(obj) if not n.startswith("_")]
    if isinstance(obj, ModuleType) and hasattr(obj, "__path__"):
        private_ok = obj.__name__.split(".")[0] == "nemo_like"
        for info in pkgutil.iter_modules(obj.__path__):
            if private_ok or not info.name.startswith("_"):
                names.append(info.name)
    return sorted(set(names))


def _has_submodule(module: ModuleType, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{module.__name__}.{name}") is not None
    except (ImportError, ValueError):
        return False


def _step(obj: Any, part: str, key: str, target: str, walked: str) -> Any:
    """One step of the walk: attribute, else submodule import; modules are gate-checked."""
    missing = object()
    try:
        found = getattr(obj, part, missing)
    except Exception as err:
        raise ConfigError(
            f"{key}: resolving '{part}' of {target!r} failed with {type(err).__name__}: {err}"
        ) from err
    if found is missing and isinstance(obj, ModuleType) and _has_submodule(obj, part):
        found = _import(f"{obj.__name__}.{part}", key, target)
    elif found is missing:
        raise ConfigError(
            f"{key}: cannot resolve {target!r}: '{walked}' has no attribute '{part}'"
            f"{_did_you_mean(part, _names_in(obj), walked + '.')}"
        )
    if part.startswith("_") and not isinstance(found, ModuleType):
        raise ConfigError(
            f"{key}: refusing {target!r}: private attribute '{part}' cannot be used in a "
            f"target path"
        )
    if isinstance(found, ModuleType):
        _check_module_allowed(found.__name__, key, target)
    return found


def _walk_attributes(obj: Any, attrs: list[str], key: str, target: str, location: str) -> Any:
    """Follow `a.b` after the ':' of a `module:a.b` or `file.py:a.b` target."""
    walked, sep = location, ":"
    for part in attrs:
        if part.startswith("_"):
            raise ConfigError(
                f"{key}: refusing {target!r}: private attribute '{part}' cannot be used in "
                f"a target path"
            )
        if not hasattr(obj, part):
            raise ConfigError(
                f"{key}: cannot resolve {target!r}: '{walked}' has no attribute '{part}'"
                f"{_did_you_mean(part, _names_in(obj), walked + sep)}"
            )
        obj = getattr(obj, part)
        if isinstance(obj, ModuleType):
            _check_module_allowed(obj.__name__, key, target)
        walked, sep = f"{walked}{sep}{part}", "."
    return obj


def _check_final(obj: Any, key: str, target: str) -> None:
    """A function or class re-exported from an outside module (os.system) stays refused."""
    if inspect.isclass(obj) or inspect.isroutine(obj):
        module = getattr(obj, "__module__", None)
        if isinstance(module, str):
            _check_module_allowed(module, key, target)
