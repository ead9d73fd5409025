"""Typed recipe sections: a YAML mapping checked against a dataclass before anything heavy loads.

A recipe declares each plain section (``step_scheduler``, ``checkpoint``, ...) as a dataclass
whose fields carry types and defaults. ``check_section`` turns the YAML mapping into that
object or raises a one-line ``ConfigError`` naming the key, the value, where it was written
(``file.yaml:12`` or ``--a.b``) and the nearest valid name. Only ``typing`` and ``dataclasses``
are used here, so a typo is reported in the time it takes to read the YAML.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

from nemo_like.config.errors import ConfigError, did_you_mean

__all__ = ["RecipeSchema", "check_recipe", "check_section", "check_value", "located"]

_MISSING = dataclasses.MISSING


def located(path: str, sources: dict[str, str] | None) -> str:
    """``step_scheduler.max_steps (recipe.yaml:7)``: the key and where its value came from."""
    if not sources:
        return path
    probe = path
    while probe:
        if probe in sources:
            return f"{path} ({sources[probe]})"
        probe = probe.rpartition(".")[0]
    return path


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    if origin in (list, tuple):
        return "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``annotation``; ints widen to float, nothing else is coerced."""
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(annotation)), value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            ok, converted = _matches(value, option)
            if ok:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool):
            return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        (inner,) = typing.get_args(annotation)[:1] or (Any,)
        items = [_matches(v, inner) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict or annotation is dict:
        return hasattr(value, "items"), value
    return isinstance(value, annotation), value


def check_value(value: Any, annotation: Any, path: str, sources: dict[str, str] | None = None) -> Any:
    """``value`` if it fits ``annotation`` (an int given for a float becomes a float), else a ConfigError."""
    ok, converted = _matches(value, annotation)
    if ok:
        return converted
    hint = ""
    if isinstance(value, str):
        words = [a for a in _flat_literals(annotation) if isinstance(a, str)]
        hint = did_you_mean(value, words)
    if value is True and typing.get_origin(annotation) is not Literal and bool not in _flat_args(annotation):
        hint = " (a bare --flag means true; give a value: --key VALUE)"
    raise ConfigError(f"{located(path, sources)}: expected {_type_name(annotation)}, got {value!r}{hint}")


def _flat_literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [v for a in _flat_args(annotation) if typing.get_origin(a) is Literal for v in typing.get_args(a)]


def _flat_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def check_section(node: Any, schema: type, path: str, sources: dict[str, str] | None = None) -> Any:
    """Build ``schema`` (a dataclass) from the mapping ``node``: unknown keys, wrong types and
    missing required keys are one-line errors; ``__post_init__`` may add its own checks."""
    if node is None:
        node = {}
    if not hasattr(node, "items"):
        raise ConfigError(f"{located(path, sources)}: expected a mapping of fields, got {node!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    given: dict[str, Any] = {}
    for key, value in node.items():
        key = str(key)
        if key not in fields:
            raise ConfigError(
                f"{located(f'{path}.{key}', sources)}: unknown field of '{path}'"
                f"{did_you_mean(key, list(fields), path + '.')} (fields: {', '.join(fields)})"
            )
        plain = value.to_dict() if hasattr(value, "to_dict") else value  # a ConfigNode, without importing it
        given[key] = check_value(plain, hints[key], f"{path}.{key}", sources)
    for name, field in fields.items():
        if name not in given and field.default is _MISSING and field.default_factory is _MISSING:
            raise ConfigError(f"{located(path, sources)}: '{path}.{name}' is required ({_type_name(hints[name])})")
    try:
        return schema(**given)
    except ConfigError as err:
        raise ConfigError(_with_source(str(err), path, sources)) from None


def _with_source(message: str, path: str, sources: dict[str, str] | None) -> str:
    """Add the file:line of the key a ``__post_init__`` message starts with."""
    key = message.split(":", 1)[0].strip()
    if key.startswith(path) and " " not in key:
        where = located(key, sources)
        if where != key:
            return where + message[len(key):]
    return message


@dataclasses.dataclass(frozen=True)
class RecipeSchema:
    """The top-level sections a recipe reads, by kind; anything else in its YAML is an error.

    ``built``: mappings with a ``_target_`` the recipe instantiates (``null`` turns an optional
    one off); ``typed``: plain sections checked against a dataclass; ``scalars``: top-level
    values and their types; ``open``: mappings a component checks itself (trackers, lm-eval);
    ``lists``: lists of built entries; ``refused``: names a user may expect, with the reason.
    A typed section absent from the YAML is None (a feature left off) unless it is ``defaulted``.
    """

    name: str
    built: frozenset[str]
    required: frozenset[str]
    typed: dict[str, type]
    scalars: dict[str, tuple[Any, Any]]
    open: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    refused: dict[str, str] = dataclasses.field(default_factory=dict)
    defaulted: frozenset[str] = frozenset()  # typed sections built with their defaults when absent
    extra_keys: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # read by the builder, not the target

    @property
    def section_names(self) -> frozenset[str]:
        return self.built | self.open | self.lists | frozenset(self.typed) | frozenset(self.scalars)

    @property
    def override_names(self) -> frozenset[str]:
        """Sections a command-line override may create: the recipe's, and the refused ones (to say why)."""
        return self.section_names | frozenset(self.refused)


def check_recipe(cfg: Any, schema: RecipeSchema) -> dict[str, Any]:
    """Check every top-level key of ``cfg`` against ``schema``; return the typed sections and scalars.

    Optional built sections set to ``null`` are removed from ``cfg`` (``--peft none`` turns LoRA off).
    """
    sources = getattr(cfg, "sources", None)
    names = schema.section_names
    for key in list(cfg.keys()):
        name = str(key)
        if name in schema.refused:
            raise ConfigError(f"{located(name, sources)}: {schema.refused[name]}")
        if name not in names:
            raise ConfigError(
                f"{located(name, sources)}: unknown section for the {schema.name} recipe"
                f"{did_you_mean(name, sorted(names))} (sections: {', '.join(sorted(names))})"
            )
    for name in sorted(schema.required):
        if cfg.get(name) is None:
            raise ConfigError(f"{name}: required section missing from the {schema.name} recipe")
    for name in sorted(schema.built):
        node = cfg.get(name) if name in cfg else None
        if name in cfg and node is None:
            del cfg[name]
        elif node is not None:
            _check_built(node, name, sources, schema.extra_keys.get(name, frozenset()))
    for name in sorted(schema.open):
        node = cfg.get(name) if name in cfg else None
        if node is not None and not hasattr(node, "items"):
            raise ConfigError(f"{located(name, sources)}: expected a mapping, got {node!r}")
    for name in sorted(schema.lists):
        node = cfg.get(name) if name in cfg else None
        if node is not None and not isinstance(node, (list, tuple)):
            raise ConfigError(f"{located(name, sources)}: expected a list of entries with a _target_, got {node!r}")
    typed: dict[str, Any] = {}
    for name, section in schema.typed.items():
        node = cfg.get(name) if name in cfg else None
        if node is not None or name in schema.required:
            typed[name] = check_section(node, section, name, sources)
        else:  # absent: its defaults, or None for an optional feature left off
            typed[name] = section() if name in schema.defaulted else None
    for name, (annotation, default) in schema.scalars.items():
        typed[name] = check_value(cfg.get(name), annotation, name, sources) if name in cfg else default
    return typed


def _check_built(node: Any, name: str, sources: dict[str, str] | None, extra: frozenset[str] = frozenset()) -> None:
    if not hasattr(node, "items"):
        raise ConfigError(f"{located(name, sources)}: expected a mapping with a _target_, got {node!r}")
    target = node.get("_target_")
    if target is None:
        raise ConfigError(f"{located(name, sources)}: needs a '_target_' (the import path of what to build)")
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"{located(name + '._target_', sources)}: expected an import path string, got {target!r}")
    check_target_arguments(node, name, sources, extra)


_NUMERIC = {"float", "int", "Tensor", "None", "Optional", "Union", "torch"}


def check_target_arguments(
    node: Any, path: str, sources: dict[str, str] | None = None, extra: frozenset[str] = frozenset()
) -> None:
    """The keys of a built mapping against its target's signature as its source declares it (no import).

    An unknown keyword, and true/false or a word where only a number belongs (a bare
    ``--optimizer.lr`` is true), are errors; nested mappings with a ``_target_`` are checked too.
    """
    from nemo_like.config.static_signature import static_signature
    from nemo_like.config.target_gate import precheck_target

    target = node.get("_target_")
    precheck_target(target, located(f"{path}._target_", sources))
    signature = static_signature(target.strip()) if isinstance(target, str) else None
    for key, value in node.items():
        key = str(key)
        if key == "_target_" or key in extra:
            continue
        if key in ("_partial_", "_args_"):  # Hydra's conventions, handled by ConfigNode.instantiate
            for index, item in enumerate(value if key == "_args_" and isinstance(value, list) else ()):
                if hasattr(item, "items") and "_target_" in item:
                    check_target_arguments(item, f"{path}._args_.{index}", sources)
            continue
        where = located(f"{path}.{key}", sources)
        if hasattr(value, "items") and "_target_" in value:
            check_target_arguments(value, f"{path}.{key}", sources)
        if signature is None:
            continue
        if key not in signature.parameters:
            if signature.var_keyword:
                continue
            raise ConfigError(
                f"{where}: {target} takes no argument '{key}'{did_you_mean(key, list(signature.parameters))} "
                f"(it takes: {', '.join(signature.parameters)})"
            )
        annotation = signature.parameters[key] or ""
        words = set(re.findall(r"[A-Za-z_]+", annotation))
        numeric = bool(words) and words <= _NUMERIC and bool(words & {"float", "int"})
        if numeric and (isinstance(value, bool) or isinstance(value, str)):
            hint = " (a bare --flag means true; give a value: --key VALUE)" if value is True else ""
            raise ConfigError(f"{where}: expected a number ({annotation}) for {target}, got {value!r}{hint}")
