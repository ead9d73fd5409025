"""A trial's recipe: the base recipe, the fixed overrides and the sampled values, written as one YAML.

The trial YAML is what ran, so ``nemo-like <method> -c trial.yaml`` reruns a trial exactly.
``${...}`` references stay as written (an environment variable is read again by the run, and a
secret never lands in the file). The base recipe is checked once with the method's own checks,
so a mistake in it is one line before the first trial, not the failure of every trial.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from nemo_like.recipes.tune.tune_config import TuneConfig
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode, load_yaml_config
from nemo_like.config.typed_sections import located

PRUNING_TARGET = "nemo_like.components.tuning.pruning.OptunaPruning"
# the method -> the nemo-like command that runs it
COMMANDS = {"sft": "finetune", "vlm": "finetune", "dpo": "dpo", "grpo": "grpo"}


def base_recipe(tc: TuneConfig) -> ConfigNode:
    """The recipe before any override, its ``${...}`` unresolved; sources point into its file."""
    if tc.recipe_path:
        return load_yaml_config(tc.recipe_path, resolve=False)
    node = ConfigNode(tc.recipe_inline or {})
    node.sources.update({k: v for k, v in tc.sources.items() if not k.startswith("tuning")})
    return node


def method_of(recipe: ConfigNode, explicit: str | None) -> str:
    """sft, dpo, grpo or vlm: ``tuning.method``, else the recipe's ``recipe:`` name or its method section."""
    if explicit:
        return explicit
    from nemo_like.recipes.llm.dpo_config import DPO_RECIPE_NAMES
    from nemo_like.recipes.llm.grpo_config import GRPO_RECIPE_NAMES
    from nemo_like.recipes.vlm.vlm_config import is_vlm_config

    named = recipe.get("recipe", None)
    name = named.get("_target_") if hasattr(named, "get") else named
    if name in DPO_RECIPE_NAMES or (name is None and "dpo" in recipe):
        return "dpo"
    if name in GRPO_RECIPE_NAMES or (name is None and "grpo" in recipe):
        return "grpo"
    return "vlm" if is_vlm_config(recipe) else "sft"


def trial_recipe(tc: TuneConfig, values: dict[str, Any], checkpoint_dir: str | None,
                 pruning: dict[str, Any] | None = None) -> ConfigNode:
    """The base with ``tc.overrides`` then ``values`` set; the run writes into ``checkpoint_dir``; ``pruning``:
    the keyword arguments of the pruning callback added to ``callbacks:``."""
    node = base_recipe(tc)
    for path, value in {**tc.overrides, **values}.items():
        try:
            node.set_by_path(path, value)
        except ConfigError as err:
            raise ConfigError(f"{_where_set(tc, path)}: {err}") from None
        node.sources[path] = _where_set(tc, path)  # a check of the recipe then names the tuning key
    if checkpoint_dir is not None:
        node.set_by_path("checkpoint.checkpoint_dir", checkpoint_dir)
    if pruning is not None:
        callbacks = node.get("callbacks") or []
        if not isinstance(callbacks, list):
            raise ConfigError(f"{located('callbacks', node.sources)}: expects a list")
        node["callbacks"] = [*callbacks, {"_target_": PRUNING_TARGET, **pruning}]
    return node


def check_recipe(tc: TuneConfig, method: str, values: dict[str, Any]) -> None:
    """Run the method's config check on the base with the overrides and one sampled point (``values``)."""
    module, schema_name, check_name = _method_parts(method)
    schema = getattr(module, schema_name)
    base = base_recipe(tc)
    for path in {**tc.overrides, **values}:
        top = path.split(".")[0]
        if top not in base and top not in schema.override_names:
            raise ConfigError(f"{_where_set(tc, path)}: '{path}' names no section of the {method} recipe "
                              f"('{top}' is neither in the recipe nor a section it takes)")
    node = trial_recipe(tc, values, None)
    node.resolve()
    getattr(module, check_name)(node)


def write_recipe(node: ConfigNode, path: Path, header: str = "") -> None:
    """The recipe as YAML (templates kept as their ``${...}`` text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(_strings(node.to_dict()), sort_keys=False, default_flow_style=False, width=120)
    path.write_text(header + text, encoding="utf-8")


def _strings(value: Any) -> Any:
    """Plain ``str`` for string subclasses (templates), which the YAML dumper does not know."""
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _method_parts(method: str) -> tuple[Any, str, str]:
    from nemo_like.recipes.llm.run import METHODS

    module_name, schema_name, check_name = METHODS[method][:3]
    return importlib.import_module(module_name), schema_name, check_name


def _where_set(tc: TuneConfig, path: str) -> str:
    """The tuning key that sets ``path``: its search-space entry or its override."""
    if any(p.path == path for p in tc.params):
        for section in ("search_space", "tune_params", "tunable_training_params", "tunable_peft_params"):
            probe = f"tuning.{section}"
            if any(k.startswith(probe) for k in tc.sources):
                return located(f"{probe}.{path}", tc.sources)
        return tc.where("search_space")
    return tc.where(f"overrides.{path}")
