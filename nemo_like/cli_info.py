"""Commands that explain the library without running anything: the shipped recipes, a section's fields.

Why: a newcomer should not have to read code to see which recipes exist or what a section may hold.
Nothing here imports torch; a recipe YAML is read as data (no target is built).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import typing
from pathlib import Path
from typing import Any

from nemo_like.config.errors import ConfigError

METHOD_SCHEMAS = {"sft": ("nemo_like.recipes.llm.sft_config", "SFT_SCHEMA"),
                  "dpo": ("nemo_like.recipes.llm.dpo_config", "DPO_SCHEMA"),
                  "grpo": ("nemo_like.recipes.llm.grpo_config", "GRPO_SCHEMA"),
                  "vlm": ("nemo_like.recipes.vlm.vlm_config", "VLM_SCHEMA")}
# Built sections whose usual target is a dataclass of this library: their fields are shown too.
BUILT_DEFAULTS = {"peft": ("nemo_like.components._peft.lora", "PeftConfig"),
                  "rng": ("nemo_like.components.training.rng", "StatefulRNG")}


def recipes_dir() -> Path:
    """The catalog: ``./recipes`` when run from a checkout, else the one beside the package."""
    here = Path.cwd() / "recipes"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "recipes"


def describe_recipe(path: Path) -> tuple[str, str]:
    """(method, one-line description) of a recipe YAML: the method from its sections, the description from its
    first comment sentence."""
    import yaml

    text = path.read_text(encoding="utf-8")
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        stripped = line.lstrip("#").strip()
        if not stripped and comment:
            break
        comment.append(stripped)
    words = " ".join(comment)
    sentence = words.split(". ")[0].split(" (")[0].rstrip(".")
    description = (sentence or "-") if len(sentence) <= 100 else sentence[:100].rsplit(" ", 1)[0] + " ..."
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return "?", description
    return method_of(data), description


def method_of(data: dict[str, Any]) -> str:
    """The method a recipe's top-level sections say (what ``nemo-like <method>`` runs it)."""
    from nemo_like.recipes.vlm.vlm_config import is_vlm_config

    if not isinstance(data, dict):
        return "?"
    if "tuning" in data or "tune_params" in data:
        return "tune"
    if "dpo" in data:
        return "dpo"
    if "grpo" in data or "rewards" in data:
        return "grpo"
    if is_vlm_config(_Getter(data)):
        return "vlm"
    return "sft"


class _Getter:
    """``cfg.get("a.b")`` over a plain dict, as ``is_vlm_config`` reads a config."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, path: str, default: Any = None) -> Any:
        value: Any = self.data
        for key in path.split("."):
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value


def recipes_main(argv: list[str]) -> int:
    """``nemo-like recipes``: every shipped recipe with its method and what it does."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: nemo-like recipes\n\nLists the recipe YAMLs under recipes/ with the method that runs them and a\n"
              "one-line description.\n\nexample:\n  nemo-like recipes\n  nemo-like finetune -c "
              "recipes/smollm2_135m/sft_lora.yaml")
        return 0
    root = recipes_dir()
    paths = sorted(root.rglob("*.yaml"))
    if not paths:
        print(f"error: no recipes under {root}", file=sys.stderr)
        return 2
    commands = {"sft": "finetune", "vlm": "finetune", "dpo": "dpo", "grpo": "grpo", "tune": "tune"}
    rows = [(str(p.relative_to(root.parent)), *describe_recipe(p)) for p in paths]
    width = max(len(r[0]) for r in rows)
    for path, method, description in rows:
        print(f"{path:<{width}}  {commands.get(method, method):<8}  {description}")
    return 0


def section_fields(section: str, method: str = "sft") -> tuple[str, list[tuple[str, str, str]]]:
    """(what the section is, [(field, type, default)]) for a top-level section of a method's recipe."""
    if method not in METHOD_SCHEMAS:
        raise ConfigError(f"--method: {method!r} is not one of {', '.join(METHOD_SCHEMAS)}")
    module, name = METHOD_SCHEMAS[method]
    schema = getattr(importlib.import_module(module), name)
    if section in schema.typed:
        cls = schema.typed[section]
        return _summary(cls), _dataclass_fields(cls)
    if section in schema.scalars:
        kind, default = schema.scalars[section]
        return "a top-level value", [(section, _type_name(kind), repr(default))]
    if section in schema.built:
        if section in BUILT_DEFAULTS:
            cls = getattr(importlib.import_module(BUILT_DEFAULTS[section][0]), BUILT_DEFAULTS[section][1])
            return f"built from its _target_ (usually {cls.__module__}.{cls.__name__})", _dataclass_fields(cls)
        return "built from its _target_: its keys are the target's arguments", []
    if section in schema.refused:
        raise ConfigError(f"{section}: {schema.refused[section]}")
    known = sorted(schema.section_names)
    raise ConfigError(f"{section}: not a section of the {schema.name} recipe (sections: {', '.join(known)})")


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else cls.__name__


def _dataclass_fields(cls: type) -> list[tuple[str, str, str]]:
    if not dataclasses.is_dataclass(cls):
        return []
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        if field.name.startswith("_"):
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(field.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        out.append((field.name, _type_name(hints.get(field.name, field.type)), default))
    return out


def _type_name(kind: Any) -> str:
    text = getattr(kind, "__name__", None) if isinstance(kind, type) else None
    return text or str(kind).replace("typing.", "").replace("NoneType", "None")


def config_fields_main(argv: list[str]) -> int:
    """``nemo-like config-fields SECTION [--method M]``: a section's fields, types and defaults."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="nemo-like config-fields", description="Print a recipe section's fields with their types and defaults.",
        epilog="examples:\n  nemo-like config-fields step_scheduler\n  nemo-like config-fields grpo --method grpo\n"
               "  nemo-like config-fields peft", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", help="a top-level section (step_scheduler, checkpoint, peft, dpo, grpo, ...)")
    parser.add_argument("--method", default=None, choices=sorted(METHOD_SCHEMAS),
                        help="the recipe whose section it is (default: the first that has it)")
    args = parser.parse_args(argv)
    methods = [args.method] if args.method else list(METHOD_SCHEMAS)
    error = None
    for method in methods:
        try:
            what, fields = section_fields(args.section, method)
        except ConfigError as err:
            error = error or err
            continue
        print(f"{args.section} ({method}): {what}")
        width = max((len(f[0]) for f in fields), default=0)
        for name, kind, default in fields:
            print(f"  {name:<{width}}  {kind}  = {default}")
        return 0
    print(f"error: {error}", file=sys.stderr)
    return 2
