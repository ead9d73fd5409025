"""Command-line overrides on top of a recipe: `--config X --optimizer.lr 1e-5 --peft none`.

Any field of the YAML can be changed from the shell without editing the file. A
misspelled section would otherwise silently create a new, unused one, so only the section
names a recipe's schema knows (`known_sections`, e.g. `SFT_SCHEMA.override_names`) or
sections that get a `_target_` may be created. Hydra's forms (`a.b=1`, `+a.b=1`, `++a.b=1`,
`~a.b`) are accepted too, with Hydra's meaning: `a.b=` changes an existing key only, `+`
adds a new one. `${...}` and `$VAR` in values are resolved after all overrides are applied,
so a reference in the recipe sees the overridden value.
"""

from __future__ import annotations

import sys
from typing import Any

from nemo_like.config.errors import did_you_mean as _did_you_mean
from nemo_like.config.hydra_overrides import (
    ANY_VALUE,
    CliOverride,
    QuotedStr,
    looks_like_hydra_override,
    parse_hydra_override,
)
from nemo_like.config.interpolation import Template
from nemo_like.config.loader import ConfigError, ConfigNode, load_yaml_config, parse_literal
from nemo_like.config.secrets import REDACTED, is_secret_key

__all__ = ["CliOverride", "apply_overrides", "parse_args_and_load_config", "parse_cli"]

# Flags that launchers append for their own use; they are not recipe fields.
_LAUNCHER_FLAGS = ("local_rank", "local-rank")

USAGE = (
    "usage: <script> --config RECIPE.yaml "
    "[--section.key VALUE | --section.key=VALUE | --flag | section.key=VALUE | +new.key=VALUE "
    "| ++section.key=VALUE | ~section.key[=VALUE]] ...\n"
    "  values are typed like Python literals: 1e-5 -> float, none -> None, "
    "true/false -> bool, [0.9,0.95] -> list; anything else stays a string\n"
    "  Hydra forms: a.b=V changes an existing key, +a.b=V adds a new one, ++a.b=V sets or adds, "
    "~a.b deletes (~a.b=V only if it equals V); quote with '...' to keep a string; no sweeps (a=1,2)\n"
    "  values may use ${section.key}, ${VAR}, ${VAR,default}, $VAR and ${oc.env:VAR,default}"
)


def parse_cli(argv: list[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split argv into the config path and typed `(dotted.key, value)` overrides, in order."""
    config: str | None = None
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, has_eq, inline = token.partition("=")
        if name in ("--config", "-c"):
            if has_eq:
                value = inline
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{name}: expects a path to a YAML recipe")
            if config is not None:
                raise ConfigError(f"{name}: given twice ('{config}' and '{value}')")
            config = value
            i += 1
            continue
        if not token.startswith("-") and looks_like_hydra_override(token):
            overrides.append(parse_hydra_override(token, parse_literal))
            i += 1
            continue
        if not token.startswith("--") or len(name) <= 2:
            raise ConfigError(
                f"unexpected argument {token!r}; overrides look like --section.key VALUE"
            )
        key = name[2:]
        if has_eq:
            raw: str | bool = inline
        elif i + 1 < len(argv) and not _is_option(argv[i + 1]):
            raw = argv[i + 1]
            i += 1
        else:
            raw = True  # a bare flag
        i += 1
        if key in _LAUNCHER_FLAGS:
            continue
        if any(not part for part in key.split(".")):
            raise ConfigError(f"--{key}: empty component in the key path")
        overrides.append((key, raw if isinstance(raw, bool) else parse_literal(raw)))
    return config, overrides


def _is_option(token: str) -> bool:
    """`--x` starts an option; `-c`/`-h` too, while `-1` or `-0.5` are values."""
    return token.startswith("--") or token.partition("=")[0] in ("-c", "-h")


def apply_overrides(
    cfg: ConfigNode, overrides: list[tuple[str, Any]], known_sections: frozenset[str] = frozenset()
) -> ConfigNode:
    """Set each override on `cfg` in place and return it; a missing top-level key is created when the
    recipe's schema names it (`known_sections`) or the overrides give it a `_target_`. Hydra-form
    overrides (``CliOverride.op``) follow Hydra's rules; `${...}` / `$VAR` are resolved at the end."""
    targeted = {
        key.split(".")[0] for key, _ in overrides
        if key.count(".") == 1 and key.endswith("._target_")
    }
    for item in overrides:
        key, value = item
        op, text = getattr(item, "op", "set"), getattr(item, "text", f"--{key}")
        if any(not part for part in key.split(".")):
            raise ConfigError(f"{text}: empty component in the key path")
        top = key.split(".")[0]
        if op == "set" and top not in cfg and top not in known_sections and top not in targeted:
            hint = _suggest(cfg, key, known_sections)
            create = f"set --{top}._target_ to create a new section"
            raise ConfigError(
                f"--{key}: no section '{top}' in the config"
                + (f"{hint} (or {create})" if hint else f"; {create}")
            )
        exists = cfg.get(key, _ABSENT) is not _ABSENT
        if op == "change" and not exists:
            hint = _suggest(cfg, key, known_sections)
            raise ConfigError(f"{key}={_show(key, value)}: no key '{key}' in the config to change{hint}; "
                              f"add it with +{key}=... (or ++{key}=... to set or add)")
        if op == "add" and exists:
            raise ConfigError(f"+{key}={_show(key, value)}: '{key}' already exists in the config "
                              f"({_located_value(cfg, key)}); change it with {key}=... or ++{key}=...")
        if op == "delete":
            _delete(cfg, key, value, exists)
            continue
        try:
            cfg.set_by_path(key, _prepare(value))
        except ConfigError as err:
            raise ConfigError(f"{'--' if op == 'set' else ''}{err}") from err
        _forget(cfg, key)
        cfg.sources[key] = text
    return cfg.resolve()


_ABSENT = object()


def _show(key: str, value: Any) -> str:
    """An override's value for a message; a credential's value is masked."""
    if is_secret_key(key.rsplit(".", 1)[-1]):
        return REDACTED
    return repr(value) if isinstance(value, str) else str(value)


def _located_value(cfg: ConfigNode, key: str) -> str:
    """Where a key was written, for messages (never its value: it may be a secret)."""
    probe = key
    while probe:
        if probe in cfg.sources:
            return f"set at {cfg.sources[probe]}"
        probe = probe.rpartition(".")[0]
    return "set in the config"


def _prepare(value: Any) -> Any:
    """Strings holding `$` become templates resolved after all overrides; quoted ones stay strings."""
    if isinstance(value, str):
        return Template(str(value), not isinstance(value, QuotedStr)) if "$" in value else str(value)
    if isinstance(value, list):
        return [_prepare(v) for v in value]
    if isinstance(value, dict):
        return {k: _prepare(v) for k, v in value.items()}
    return value


def _forget(cfg: ConfigNode, key: str) -> None:
    """A replaced or deleted key no longer comes from the file or the environment."""
    def under(path: str) -> bool:
        return path == key or path.startswith(key + ".")

    for path in [p for p in cfg.sources if under(p)]:
        del cfg.sources[path]
    cfg.env_paths.difference_update([p for p in cfg.env_paths if under(p)])


def _delete(cfg: ConfigNode, key: str, value: Any, exists: bool) -> None:
    """`~a.b` / `~a.b=VALUE`: Hydra's deletion, refused when the key is absent or holds another value."""
    if not exists:
        raise ConfigError(f"~{key}: no key '{key}' in the config to delete{_suggest(cfg, key, frozenset())}")
    current = cfg.get(key)
    plain = current.to_dict() if isinstance(current, ConfigNode) else current
    if value is not ANY_VALUE and _prepare(value) != plain:
        raise ConfigError(f"~{key}={_show(key, value)}: not deleted, '{key}' holds another value "
                          f"({_located_value(cfg, key)})")
    parent_key, _, leaf = key.rpartition(".")
    parent = cfg.get(parent_key) if parent_key else cfg
    if isinstance(parent, list):
        del parent[int(leaf)]
    else:
        del parent[leaf]
    _forget(cfg, key)


def _suggest(cfg: ConfigNode, key: str, known_sections: frozenset[str]) -> str:
    """A top-level name close to the typo, else an existing key with the same last part."""
    top, leaf = key.split(".")[0], key.split(".")[-1]
    hint = _did_you_mean(top, sorted({*map(str, cfg.keys()), *known_sections}))
    if hint:
        return hint
    if "." not in key:
        paths = [p for p in _leaf_paths(cfg, "") if p.rsplit(".", 1)[-1] == leaf]
        if paths:
            return f"; did you mean '{paths[0]}'?"
    return ""


def _leaf_paths(node: ConfigNode, prefix: str) -> list[str]:
    paths: list[str] = []
    for k, v in node.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        paths.append(path)
        if isinstance(v, ConfigNode):
            paths.extend(_leaf_paths(v, path))
    return paths


def parse_args_and_load_config(
    argv: list[str] | None = None, default_config: str | None = None,
    known_sections: frozenset[str] = frozenset(),
) -> ConfigNode:
    """The entry point of every recipe script: read `--config`, load it, apply overrides
    (`known_sections`: the top-level names the recipe's schema lets an override create)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        raise SystemExit(0)
    config_path, overrides = parse_cli(argv)
    config_path = config_path or default_config
    if not config_path:
        raise ConfigError("no config file given; pass --config path/to/recipe.yaml")
    return apply_overrides(load_yaml_config(config_path, resolve=False), overrides, known_sections)
