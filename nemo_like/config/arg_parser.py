"""Command-line overrides on top of a recipe: `--config X --optimizer.lr 1e-5 --peft none`.

Any field of the YAML can be changed from the shell without editing the file. A
misspelled section would otherwise silently create a new, unused one, so only the section
names a recipe's schema knows (`known_sections`, e.g. `SFT_SCHEMA.override_names`) or
sections that get a `_target_` may be created.
"""

from __future__ import annotations

import sys
from typing import Any

from nemo_like.config.errors import did_you_mean as _did_you_mean
from nemo_like.config.loader import ConfigError, ConfigNode, interpolate_env, load_yaml_config, parse_literal

__all__ = ["apply_overrides", "parse_args_and_load_config", "parse_cli"]

# Flags that launchers append for their own use; they are not recipe fields.
_LAUNCHER_FLAGS = ("local_rank", "local-rank")

USAGE = (
    "usage: <script> --config RECIPE.yaml "
    "[--section.key VALUE | --section.key=VALUE | --flag] ...\n"
    "  values are typed like Python literals: 1e-5 -> float, none -> None, "
    "true/false -> bool, [0.9,0.95] -> list; anything else stays a string"
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
    recipe's schema names it (`known_sections`) or the overrides give it a `_target_`."""
    targeted = {
        key.split(".")[0] for key, _ in overrides
        if key.count(".") == 1 and key.endswith("._target_")
    }
    for key, value in overrides:
        top = key.split(".")[0]
        if top not in cfg and top not in known_sections and top not in targeted:
            hint = _suggest(cfg, key, known_sections)
            create = f"set --{top}._target_ to create a new section"
            raise ConfigError(
                f"--{key}: no section '{top}' in the config"
                + (f"{hint} (or {create})" if hint else f"; {create}")
            )
        if isinstance(value, str) and interpolate_env(value, key) != value:
            value = interpolate_env(value, key)
            cfg.env_paths.add(key)
        try:
            cfg.set_by_path(key, value)
        except ConfigError as err:
            raise ConfigError(f"--{err}") from err
        cfg.sources[key] = f"--{key}"
    return cfg


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
    return apply_overrides(load_yaml_config(config_path), overrides, known_sections)
