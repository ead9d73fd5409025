"""The gate that turns an import path from a recipe or the CLI into an object.

A YAML is untrusted: whatever it names gets imported and called. So every path (``_target_``,
``*_fn``, ``*_func``, ``tp_plan``, callbacks, trackers) goes through ``resolve_target``, which
admits callables, not packages: nemo_like's component targets and the reviewed third-party
constructors in ``gate_rules.py``. A refusal is one line naming the key, the path, why, and
the opt-in. ``check_call_arguments`` then refuses arguments that run foreign code
(``trust_remote_code``) or unpickle (``weights_only: false``) unless their own opt-in is set.

Opt-ins (environment): NEMO_LIKE_ENABLE_USER_MODULES=1 admits any module and
``path/to/file.py:fn`` targets, but not the deny list of process, code, pickle and
file-writing callables; NEMO_LIKE_ALLOW_UNSAFE_TARGETS=1 turns the gate off;
NEMO_LIKE_TRUST_REMOTE_CODE=1 and NEMO_LIKE_ALLOW_PICKLE=1 admit those arguments.
An application embedding nemo_like may add trusted packages or exact paths with
``target_gate.ALLOWED_MODULE_PREFIXES += ("my_pkg",)`` (the deny list still applies).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from nemo_like.config import gate_rules
from nemo_like.config.errors import ConfigError
from nemo_like.config.errors import did_you_mean as _did_you_mean
from nemo_like.config.gate_rules import (
    ALLOW_PICKLE_ENV,
    TRUST_REMOTE_CODE_ENV,
    UNSAFE_TARGETS_ENV,
    USER_MODULES_ENV,
    canonical_name,
    pattern_matches,
)

__all__ = [
    "ALLOWED_MODULE_PREFIXES", "ALLOW_PICKLE_ENV", "DENIED_TARGET_PREFIXES", "TRUST_REMOTE_CODE_ENV",
    "UNSAFE_TARGETS_ENV", "USER_MODULES_ENV", "check_call_arguments", "check_user_code", "precheck_target",
    "resolve_target",
]

# Packages (or exact import paths) the application trusts wholesale; read at every resolution.
ALLOWED_MODULE_PREFIXES: tuple[str, ...] = ()
# Paths refused whatever is opted in short of the unsafe switch; reasons in gate_rules.DENIED_TARGETS.
DENIED_TARGET_PREFIXES: tuple[str, ...] = tuple(gate_rules.DENIED_TARGETS)

_REVIEWED_TOPS = ("nemo_like", "torch", "torchdata", "transformers", "peft", "datasets")
_PLAIN_DATA = (dict, list, tuple, str, bytes, int, float, bool, type(None))
_NEMO_LIKE_WHAT = ("nemo_like's component targets (datasets, collaters, losses, rewards, PEFT and distributed configs, "
                   "RNG, schedulers, callbacks, trackers, model loaders)")


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------ decisions
def _denied_reason(name: str) -> str | None:
    """Why ``name`` (a path or a definition's name) is on the deny list, else None."""
    for prefix in DENIED_TARGET_PREFIXES:
        if name == prefix or name.startswith(prefix + "."):
            return gate_rules.DENIED_TARGETS.get(prefix, "is on the deny list")
    return gate_rules.DENIED_NAMES.get(name.rpartition(".")[2])


def _refuse_denied(key: str, written: str, name: str, why: str) -> ConfigError:
    where = "" if name == written.replace(":", ".") else f" (defined as {name})"
    return ConfigError(
        f"{key}: refusing {written!r}{where}: it {why}; only {UNSAFE_TARGETS_ENV}=1 allows it "
        f"({USER_MODULES_ENV}=1 does not)"
    )


def _refuse_unreviewed(key: str, written: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: refusing {written!r}: {why}; set {USER_MODULES_ENV}=1 to allow other callables")


def _admit_path(path: str, key: str, written: str) -> None:
    """Before any import: the path is not denied and lies where a reviewed target may."""
    if _env_on(UNSAFE_TARGETS_ENV):
        return
    why = _denied_reason(path)
    if why:
        raise _refuse_denied(key, written, path, why)
    if (_matches(path, ("nemo_like",)) or any(pattern_matches(r.pattern, path) for r in gate_rules.REVIEWED_RULES)
            or _matches(path, ALLOWED_MODULE_PREFIXES) or _env_on(USER_MODULES_ENV)):
        return
    top = path.split(".")[0]
    if top in _REVIEWED_TOPS:
        raise _refuse_unreviewed(key, written, f"{top} admits {_admitted(path)} only")
    raise _refuse_unreviewed(
        key, written, f"package '{top}' is not reviewed (reviewed: {', '.join(_REVIEWED_TOPS)})"
        f"{_did_you_mean(top, list(_REVIEWED_TOPS))}",
    )


def _admitted(path: str) -> str:
    """What the reviewed rules admit in the namespace of ``path``, for the refusal."""
    if _matches(path, ("nemo_like",)):
        return _NEMO_LIKE_WHAT
    top = path.split(".")[0]
    fitting = [r for r in gate_rules.REVIEWED_RULES if pattern_matches(r.pattern, path)]
    rules = fitting or [r for r in gate_rules.REVIEWED_RULES if r.pattern.split(".")[0] == top]
    return "; ".join(f"{r.pattern}: {r.what}" for r in rules)


def _admit_object(obj: Any, path: str | None, key: str, written: str) -> None:
    """After resolution: judge what the path reached by its definition, not by its spelling."""
    if _env_on(UNSAFE_TARGETS_ENV):
        return
    name = canonical_name(obj)
    names = [] if isinstance(obj, _PLAIN_DATA) else [name]  # a plan mapping is data, not `builtins.dict`
    if hasattr(obj, "__func__"):
        names.append(canonical_name(obj.__func__))
    for candidate in names:
        why = _denied_reason(candidate)
        if why:
            raise _refuse_denied(key, written, candidate, why)
    if isinstance(obj, ModuleType):
        raise ConfigError(f"{key}: refusing {written!r}: it names the module '{obj.__name__}', not a callable")
    if path is None:  # a file target: user modules are on
        return
    if _matches(path, ("nemo_like",)):
        if any(pattern_matches(p, name) for p in gate_rules.NEMO_LIKE_TARGETS):
            return
    elif any(pattern_matches(r.pattern, path) and r.admits(obj) for r in gate_rules.REVIEWED_RULES):
        return
    if _matches(path, ALLOWED_MODULE_PREFIXES) or _env_on(USER_MODULES_ENV):
        return
    raise _refuse_unreviewed(key, written, f"{name} is not one of {_admitted(path)}")


# ------------------------------------------------------------------ resolution
def resolve_target(target: Any, key: str = "_target_") -> Any:
    """Resolve an import path from a recipe or the CLI through the gate; callables pass through."""
    if not isinstance(target, str):
        if callable(target):
            return target  # an object handed over by code, not a path from the YAML
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


def precheck_target(target: Any, key: str = "_target_") -> None:
    """The gate's verdict on the path alone, importing nothing: lets a recipe check every target
    before torch loads. ``resolve_target`` still judges the object the path reaches."""
    if not isinstance(target, str) or not target.strip():
        return
    text = target.strip()
    location, colon, attrs = text.rpartition(":")
    if colon and (location.endswith(".py") or "/" in location or os.sep in location):
        if not (_env_on(USER_MODULES_ENV) or _env_on(UNSAFE_TARGETS_ENV)):
            raise ConfigError(
                f"{key}: refusing file target {text!r}: it runs that file's code; set {USER_MODULES_ENV}=1 "
                f"to load code from files"
            )
        return
    parts = (location.split(".") + attrs.split(".")) if colon else text.split(".")
    _check_components(parts, key, text, allow_private=parts[0] == "nemo_like")
    _admit_path(".".join(parts), key, text)


def _check_components(parts: list[str], key: str, target: str, allow_private: bool) -> None:
    for part in parts:
        if not part.isidentifier():
            raise ConfigError(f"{key}: {target!r} is not a valid import path ('{part}')")
        if part.startswith("__") or (part.startswith("_") and not allow_private):
            raise ConfigError(
                f"{key}: refusing {target!r}: private component '{part}' cannot be used in a target path"
            )


def _resolve_file_target(location: str, attrs: str, key: str, target: str) -> Any:
    """Load `path/to/file.py:fn` as a module; only with user modules enabled."""
    if not (_env_on(USER_MODULES_ENV) or _env_on(UNSAFE_TARGETS_ENV)):
        raise ConfigError(
            f"{key}: refusing file target {target!r}: it runs that file's code; set {USER_MODULES_ENV}=1 "
            f"to load code from files"
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
                f"{key}: running '{location}' for target {target!r} failed with {type(err).__name__}: {err}"
            ) from err
    obj = _walk_attributes(module, parts, key, target, location)
    _admit_object(obj, None, key, target)
    return obj


def _resolve_dotted(module_parts: list[str], attrs: list[str] | None, key: str, target: str) -> Any:
    """Judge the path, import its longest module prefix, walk the rest, then judge the object."""
    parts = module_parts + (attrs or [])
    top = module_parts[0]
    _check_components(parts, key, target, allow_private=top == "nemo_like")
    path = ".".join(parts)
    _admit_path(path, key, target)
    obj: Any = _import(top, key, target)
    for i, part in enumerate(module_parts[1:], start=1):
        obj = _step(obj, part, key, target, ".".join(module_parts[:i]))
    if attrs is not None:
        obj = _walk_attributes(obj, attrs, key, target, ".".join(module_parts))
    _admit_object(obj, path, key, target)
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
                hint = _did_you_mean(name, list(_REVIEWED_TOPS + ALLOWED_MODULE_PREFIXES))
            raise ConfigError(f"{key}: cannot resolve {target!r}: no module '{name}'{hint}") from None
        raise ConfigError(
            f"{key}: importing '{name}' for {target!r} failed: missing dependency '{err.name}' ({err})"
        ) from err
    except Exception as err:
        raise ConfigError(f"{key}: importing '{name}' for {target!r} failed with {type(err).__name__}: {err}") from err


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
    """One step of the walk: attribute, else submodule import."""
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
            f"{key}: refusing {target!r}: private attribute '{part}' cannot be used in a target path"
        )
    return found


def _walk_attributes(obj: Any, attrs: list[str], key: str, target: str, location: str) -> Any:
    """Follow `a.b` after the ':' of a `module:a.b` or `file.py:a.b` target."""
    walked, sep = location, ":"
    for part in attrs:
        if part.startswith("_"):
            raise ConfigError(
                f"{key}: refusing {target!r}: private attribute '{part}' cannot be used in a target path"
            )
        if not hasattr(obj, part):
            raise ConfigError(
                f"{key}: cannot resolve {target!r}: '{walked}' has no attribute '{part}'"
                f"{_did_you_mean(part, _names_in(obj), walked + sep)}"
            )
        obj = getattr(obj, part)
        walked, sep = f"{walked}{sep}{part}", "."
    return obj


# ------------------------------------------------------------------ arguments
def _argument_refusal(arg: str, value: Any) -> tuple[str, str] | None:
    """(why, opt-in) when ``arg=value`` runs foreign code or unpickles, else None."""
    falsy_flag = isinstance(value, (bool, int, float)) and not value  # "false" as a string is truthy downstream
    if not _env_on(TRUST_REMOTE_CODE_ENV):
        if arg == "trust_remote_code" and value is not None and not falsy_flag:
            return "it runs Python files shipped with the model or data", TRUST_REMOTE_CODE_ENV
        if (arg == "use_kernels" and bool(value)) or (
                arg == "attn_implementation" and isinstance(value, str) and "/" in value):
            return "it downloads and loads compiled kernels from the Hub", TRUST_REMOTE_CODE_ENV
    unpickles = ((arg == "weights_only" and value is not None and not value)
                 or (arg == "allow_pickle" and bool(value)) or (arg == "pickle_module" and value is not None))
    if unpickles and not _env_on(ALLOW_PICKLE_ENV):
        return "unpickling runs code stored in the file", ALLOW_PICKLE_ENV
    return None


def _walk_arguments(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """Every (dotted path, name, value) in nested plain mappings and lists of arguments."""
    if depth > 8:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for name, inner in items:
        where = f"{path}.{name}" if path else str(name)
        yield where, str(name), inner
        yield from _walk_arguments(inner, where, depth + 1)


def check_call_arguments(target: Any, kwargs: dict[str, Any], key: str, written: str | None = None) -> None:
    """Refuse arguments that run foreign code or unpickle, however deep they are nested.

    ``key`` is the node's ``..._target_`` key; the refusal names the argument's own key,
    the target, why, and the variable that opts in.
    """
    section = key[: -len("_target_")] if key.endswith("_target_") else f"{key}."
    name = written or canonical_name(target)
    for where, arg, value in _walk_arguments(kwargs, ""):
        refusal = _argument_refusal(arg, value)
        if refusal:
            why, env = refusal
            raise ConfigError(
                f"{section}{where}: refusing to call {name!r} with {arg}={value!r}: {why}; set {env}=1 to allow it"
            )
    script = kwargs.get("path")
    if (isinstance(script, str) and script.strip().endswith(".py") and not _env_on(TRUST_REMOTE_CODE_ENV)
            and canonical_name(target) == "datasets.load.load_dataset"):
        raise ConfigError(
            f"{section}path: refusing to call {name!r} on the script {script!r}: loading it runs its code; "
            f"set {TRUST_REMOTE_CODE_ENV}=1 to allow it"
        )


def check_user_code(value: Any, key: str, why: str) -> None:
    """Refuse a recipe value that makes a library run Python from files (an lm-eval ``include_path``
    whose task YAMLs name ``!function``), unless user code is opted in like file targets."""
    if value in (None, "", [], ()) or _env_on(USER_MODULES_ENV) or _env_on(UNSAFE_TARGETS_ENV):
        return
    raise ConfigError(f"{key}: refusing {value!r}: {why}; set {USER_MODULES_ENV}=1 to run code from files")
