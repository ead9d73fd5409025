"""YAML recipes as a tree of ConfigNodes that build the objects they name.

A recipe is plain YAML; every mapping that names a `_target_` import path is built
by calling that target with the mapping's other keys. The path goes through the gate
in `target_gate.py` (an allow-list of callables), so a recipe from the internet cannot
run `os.system`.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from nemo_like.config.call_text import brief_call, check_binding, describe
from nemo_like.config.errors import ConfigError, ConfigKeyError
from nemo_like.config.errors import did_you_mean as _did_you_mean
from nemo_like.config.interpolation import Template, resolve_templates
from nemo_like.config.partial_call import GatedPartial, named_arguments
from nemo_like.config.typed_sections import located
from nemo_like.config.target_gate import (
    ALLOWED_MODULE_PREFIXES,
    DENIED_TARGET_PREFIXES,
    USER_MODULES_ENV,
    resolve_target,
)

__all__ = [
    "ALLOWED_MODULE_PREFIXES",
    "DENIED_TARGET_PREFIXES",
    "USER_MODULES_ENV",
    "ConfigError",
    "ConfigKeyError",
    "ConfigNode",
    "GatedPartial",
    "load_yaml_config",
    "parse_literal",
    "resolve_target",
]

# --------------------------------------------------------------------------- values
def parse_literal(text: str) -> Any:
    """Type a string the way a Python literal reads, else return it unchanged.

    PyYAML leaves `1e-8`, `None` and `none` as strings and the shell gives only
    strings, so both paths share this: numbers, None, booleans, lists and dicts.
    """
    s = text.strip()
    low = s.lower()
    if low in ("none", "null", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if s and s[0] in "[{":
        # Flow collections with bare words, e.g. [q_proj, v_proj] or [none, 1e-5].
        try:
            loaded = yaml.load(s, Loader=_RecipeLoader)
        except yaml.YAMLError:
            return text
        if isinstance(loaded, (list, dict)):
            return _type_plain(loaded, "", interpolate=False)
    return text


class _PlainStr(str):
    """A string that was an unquoted YAML scalar, so it may still be a literal."""


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that marks unquoted strings and refuses duplicate keys."""

    def construct_yaml_str(self, node: yaml.ScalarNode) -> str:  # type: ignore[override]
        value = self.construct_scalar(node)
        return _PlainStr(value) if node.style is None else str(value)

    def construct_mapping(  # type: ignore[override]
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<: *base` keys may be overridden on purpose
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(ident)
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor("tag:yaml.org,2002:str", _RecipeLoader.construct_yaml_str)


def _type_plain(value: Any, path: str, interpolate: bool = True) -> Any:
    """Walk freshly loaded YAML: type unquoted literals, keep `$` forms as templates to resolve."""
    if isinstance(value, dict):
        return {
            (str(k) if isinstance(k, str) else k): _type_plain(v, _join(path, k), interpolate)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_type_plain(v, _join(path, i), interpolate) for i, v in enumerate(value)]
    if isinstance(value, str):
        plain = isinstance(value, _PlainStr)
        if interpolate and "$" in value:
            return Template(str(value), plain)
        return parse_literal(str(value)) if plain else str(value)
    return value


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def load_yaml_config(path: str | os.PathLike[str], resolve: bool = True) -> "ConfigNode":
    """Read a recipe file into a ConfigNode; every failure names the file on one line.

    `resolve=False` leaves `${...}` / `$VAR` for ``ConfigNode.resolve`` (after CLI overrides,
    so that a reference sees the overridden value, as in Hydra).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{file}' does not exist") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file '{file}' is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r})") from None
    except OSError as err:
        raise ConfigError(f"config file '{file}' cannot be read: {err}") from err
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file '{file}' is not valid YAML{where}: {problem}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{file}' must hold a mapping of sections, got a {type(data).__name__}"
        )
    root = ConfigNode(_type_plain(data, ""))
    root.sources.update({key: f"{file}:{line}" for key, line in _key_lines(text).items()})
    if resolve:
        root.resolve()
    return root


def _key_lines(text: str) -> dict[str, int]:
    """The 1-based line of every dotted key in a YAML text, for errors that point at the file."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and not key_node.tag.endswith(":merge"):
                    key = _join(path, key_node.value)
                    lines.setdefault(key, key_node.start_mark.line + 1)
                    walk(value_node, key)
                else:
                    walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = _join(path, index)
                lines.setdefault(key, item.start_mark.line + 1)
                walk(item, key)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


# --------------------------------------------------------------------------- the node
class ConfigNode:
    """A mapping of recipe values with attribute access that knows its dotted path."""

    def __init__(self, data: dict | None = None, path: str = "") -> None:
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_sources", {})
        object.__setattr__(self, "_env_paths", set())
        for key, value in (data or {}).items():
            self._data[key] = _wrap(value, _join(path, key))

    # -- mapping protocol
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        data = object.__getattribute__(self, "_data")
        if name in data:
            return data[name]
        raise ConfigKeyError(self._missing(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_path", "_data", "_sources", "_env_paths"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __getitem__(self, key: Any) -> Any:
        if key not in self._data:
            raise KeyError(self._missing(key))
        return self._data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._data[key] = _wrap(value, _join(self._path, key))

    def __delitem__(self, key: Any) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConfigNode):
            return self.to_dict() == other.to_dict()
        if isinstance(other, dict):
            return self.to_dict() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = f", path={self._path!r}" if self._path else ""
        return f"ConfigNode({self.to_dict()!r}{where})"

    def keys(self):  # noqa: ANN201 - a dict view
        return self._data.keys()

    def values(self):  # noqa: ANN201
        return self._data.values()

    def items(self):  # noqa: ANN201
        return self._data.items()

    @property
    def sources(self) -> dict[str, str]:
        """Where each dotted key was written: ``recipe.yaml:12`` or ``--optimizer.lr`` (root node only)."""
        return self._sources

    @property
    def env_paths(self) -> set[str]:
        """Dotted keys whose values were read from the environment (``${oc.env:VAR}``, ``${VAR}``, ``$VAR``)
        or copied from such a key by ``${a.b}``: never written out in plain form."""
        return self._env_paths

    @property
    def node_path(self) -> str:
        """Dotted key of this node inside the recipe ('' for the root)."""
        return self._path

    def _missing(self, key: object) -> str:
        hint = _did_you_mean(str(key), [str(k) for k in self._data])
        return f"{_join(self._path, key)}: no such key{hint}"

    # -- interpolation
    def resolve(self) -> "ConfigNode":
        """Resolve the `${...}` / `$VAR` values still pending (from the file or the CLI), in place."""
        resolve_templates(
            self, self._sources, self._env_paths, lambda p: located(p, self._sources),
            lambda v: isinstance(v, ConfigNode), parse_literal, _wrap,
        )
        return self

    # -- dotted paths
    def get(self, path: Any, default: Any = None) -> Any:
        """Read `a.b.c` (list items by index), or `default` when any part is absent."""
        node: Any = self
        for part in str(path).split(".") if isinstance(path, str) else [path]:
            if isinstance(node, ConfigNode) and part in node._data:
                node = node._data[part]
            elif isinstance(node, (list, tuple)) and str(part).isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return default
        return node

    def set_by_path(self, path: str, value: Any) -> None:
        """Set `a.b.c`, creating missing sections; a scalar in the way is a ConfigError."""
        parts = path.split(".")
        full = _join(self._path, path)
        if any(not p for p in parts):
            raise ConfigError(f"{full}: empty component in the key path")
        node: Any = self
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = _join(self._path, ".".join(parts[:i])) if i else self._path
            if isinstance(node, ConfigNode):
                if last:
                    node[part] = value
                    return
                if node._data.get(part) is None:
                    node[part] = {}
                node = node._data[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if last:
                    node[int(part)] = _wrap(value, _join(here, part))
                    return
                node = node[int(part)]
            elif isinstance(node, list):
                raise ConfigError(
                    f"{full}: '{here}' is a list of {len(node)} items; "
                    f"'{part}' is not an index in it"
                )
            else:
                raise ConfigError(
                    f"{full}: cannot set a key under '{here}', which holds {node!r} "
                    f"({type(node).__name__}), not a mapping"
                )

    # -- export and build
    def to_dict(self) -> dict:
        """Plain nested Python values (safe for yaml.safe_dump); objects become import paths."""
        return {key: _plain(value) for key, value in self._data.items()}

    def instantiate(self, *args: Any, **kwargs: Any) -> Any:
        """Call `_target_` with this node's keys; runtime kwargs win over the YAML's.

        Hydra's conventions hold: `_args_` lists positional arguments (runtime `args` replace
        them), and `_partial_: true` returns a ``functools.partial`` of the target instead of
        calling it. Either way the target and every argument go through the gate first.
        """
        key = _join(self._path, "_target_")
        if "_target_" not in self._data:
            raise ConfigError(
                f"{self._path or '<root>'}: no '_target_' to instantiate "
                f"(keys: {', '.join(map(str, self._data)) or 'none'})"
            )
        for name in _UNSUPPORTED_HYDRA_KEYS:
            if name in self._data:
                raise ConfigError(
                    f"{_join(self._path, name)}: Hydra's '{name}' is not supported "
                    f"(got {self._data[name]!r}); nested targets are always built and values stay Python objects"
                )
        raw_target = self._data["_target_"]
        target = resolve_target(raw_target, key)
        if not callable(target):
            raise ConfigError(
                f"{key}: {describe(raw_target)!r} resolves to a {type(target).__name__}, "
                f"which cannot be called"
            )
        partial = self._data.get("_partial_", False)
        if not isinstance(partial, bool):
            raise ConfigError(f"{_join(self._path, '_partial_')}: expected true or false, got {partial!r}")
        yaml_args = self._data.get("_args_", [])
        if not isinstance(yaml_args, (list, tuple)):
            raise ConfigError(f"{_join(self._path, '_args_')}: expected a list of positional arguments, "
                              f"got {yaml_args!r}")
        if not args:
            args = tuple(_build(v, _join(self._path, f"_args_.{i}"), "_args_") for i, v in enumerate(yaml_args))
        built = {
            name: _build(value, _join(self._path, name), str(name))
            for name, value in self._data.items()
            if name not in _SPECIAL_KEYS and name not in kwargs
        }
        built.update(kwargs)
        from nemo_like.config.target_gate import check_call_arguments

        written = raw_target if isinstance(raw_target, str) else None
        check_call_arguments(target, named_arguments(target, args, built), key, written)
        check_binding(target, args, built, key, raw_target, partial=partial)
        if partial:
            return GatedPartial.make(target, args, built, key, written)
        try:
            return target(*args, **built)
        except ConfigError:
            raise
        except (ValueError, OSError) as err:
            # The target judged its inputs (a value, a data row, a file): its own words name the culprit.
            raise ConfigError(f"{self._path or key}: {err}") from err
        except TypeError as err:
            # A keyword the YAML gave that a callee deeper down does not take (through **kwargs).
            unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            if unexpected and unexpected.group(1) in self._data:
                name = unexpected.group(1)
                raise ConfigError(f"{_join(self._path, name)}: not an argument that {describe(raw_target)} "
                                  f"passes on anywhere ({err}); given {brief_call(args, built)}") from err
            err.add_note(f"(raised while building '{self._path or key}': {describe(raw_target)})")
            raise
        except Exception as err:
            # Anything else is a bug: it keeps its traceback, which ends by naming what was being built.
            err.add_note(f"(raised while building '{self._path or key}': {describe(raw_target)})")
            raise


_SPECIAL_KEYS = frozenset({"_target_", "_partial_", "_args_"})
_UNSUPPORTED_HYDRA_KEYS = ("_recursive_", "_convert_")


def _wrap(value: Any, path: str) -> Any:
    """Turn dicts into ConfigNodes (also inside lists) so that every level has a path."""
    if isinstance(value, ConfigNode):
        value = value._data
    if isinstance(value, dict):
        return ConfigNode(value, path)
    if isinstance(value, list):
        return [_wrap(v, _join(path, i)) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_wrap(v, _join(path, i)) for i, v in enumerate(value))
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigNode):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return describe(value)


def _build(value: Any, path: str, key: str) -> Any:
    """Prepare one YAML value as an argument: nested targets built, `*_fn` paths resolved."""
    if isinstance(value, ConfigNode):
        if "_target_" in value:
            return value.instantiate()
        return {k: _build(v, _join(path, k), str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v, _join(path, i), key) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_build(v, _join(path, i), key) for i, v in enumerate(value))
    if key.endswith("_fn") and isinstance(value, str) and ("." in value or ":" in value):
        return resolve_target(value, path)
    return value
