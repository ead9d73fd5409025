"""The ``tuning:`` section of a tune YAML, checked whole before any trial starts.

Every mistake is one line naming the key and where it was written (file:line), because a
typo found after an hour of trials costs that hour. Oumi's field names (``tunable_training_params``,
``evaluation_metrics``, ``tuner_sampler``...) are read as their equivalents here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_like.recipes.tune import oumi_names
from nemo_like.components.tuning.run_metrics import Objective
from nemo_like.components.tuning.search_space import ParamSpec, parse_param
from nemo_like.config.errors import ConfigError, did_you_mean
from nemo_like.config.typed_sections import located

METHODS = ("sft", "dpo", "grpo", "vlm")
KEEP = ("best", "all", "none")
REDUCE = ("last", "best")
DIRECTIONS = {"minimize": "minimize", "min": "minimize", "maximize": "maximize", "max": "maximize"}

_KEYS = {
    "recipe", "method", "output_dir", "n_trials", "sampler", "seed", "pruner", "storage", "study_name",
    "load_if_exists", "search_space", "objectives", "n_jobs", "keep_checkpoints", "overrides", "trial_timeout_s",
    # Oumi's names
    "tune_params", "tunable_training_params", "tunable_peft_params", "fixed_training_params", "fixed_peft_params",
    "evaluation_metrics", "evaluation_direction", "tuner_type", "tuner_sampler", "custom_eval_metrics",
}


@dataclass
class TuneConfig:
    """What a study needs; ``recipe_inline`` holds the recipe sections written beside ``tuning:`` (Oumi style)."""

    output_dir: Path
    recipe_path: str | None
    recipe_inline: dict[str, Any] | None
    method: str | None
    n_trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None
    storage: str
    study_name: str
    load_if_exists: bool
    params: list[ParamSpec]
    objectives: list[Objective]
    n_jobs: int = 1
    keep_checkpoints: str = "best"
    overrides: dict[str, Any] = field(default_factory=dict)
    trial_timeout_s: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        return located(f"tuning.{key}" if key else "tuning", self.sources)


def parse_tune_config(tuning: Any, rest: dict[str, Any], sources: dict[str, str],
                      cli_overrides: dict[str, Any] | None = None) -> TuneConfig:
    """``tuning`` is the section's mapping, ``rest`` the other top-level sections (an inline recipe)."""
    def at(key: str) -> str:
        return located(f"tuning.{key}", sources)

    if not hasattr(tuning, "get"):
        raise ConfigError(f"{located('tuning', sources)}: expects a mapping (recipe, search_space, objectives, ...)")
    for key in tuning.keys():
        if key not in _KEYS:
            raise ConfigError(f"{at(str(key))}: not a tuning key{did_you_mean(str(key), sorted(_KEYS))}")
    if tuning.get("tuner_type", "OPTUNA") != "OPTUNA":
        raise ConfigError(f"{at('tuner_type')}: only OPTUNA is supported, got {tuning.get('tuner_type')!r}")
    if tuning.get("custom_eval_metrics") is not None:
        raise ConfigError(f"{at('custom_eval_metrics')}: not supported; objectives name metrics the runs log "
                          "(val_loss, train_loss, tps, or a method's val_* score)")

    recipe_path = tuning.get("recipe")
    inline = {k: _plain(v) for k, v in rest.items()} or None
    if recipe_path is not None and not isinstance(recipe_path, str):
        raise ConfigError(f"{at('recipe')}: expects the path of a recipe YAML, got {recipe_path!r}")
    if recipe_path and inline:
        raise ConfigError(f"{at('recipe')}: given together with recipe sections beside tuning: "
                          f"({', '.join(sorted(inline))}); put the recipe in one place, or move those into "
                          "tuning.overrides")
    if not recipe_path and not inline:
        raise ConfigError(f"{at('recipe')}: no recipe; set tuning.recipe to a recipe YAML (e.g. "
                          "recipes/smollm2_135m/sft_quickstart.yaml) or write its sections beside tuning:")
    if recipe_path and not Path(recipe_path).is_file():
        raise ConfigError(f"{at('recipe')}: recipe file '{recipe_path}' does not exist")

    output_dir = Path(str(tuning.get("output_dir") or "tuning_output"))
    params = _search_space(tuning, at)
    overrides = dict(_mapping(tuning.get("overrides"), at("overrides")))
    method = tuning.get("method")
    for section, table in (("fixed_training_params", oumi_names.TRAINING_PATHS),
                           ("fixed_peft_params", oumi_names.PEFT_PATHS)):
        fixed, named = oumi_names.fixed_overrides(_mapping(tuning.get(section), at(section)), table, at(section))
        overrides.update(fixed)
        method = method or named
    overrides.update(cli_overrides or {})
    if method is not None and method not in METHODS:
        raise ConfigError(f"{at('method')}: {method!r} is not one of {', '.join(METHODS)}")
    clash = sorted(set(overrides) & {p.path for p in params})
    if clash:
        raise ConfigError(f"{at('overrides')}: '{clash[0]}' is both searched and fixed; keep one")

    objectives = _objectives(tuning, at)
    sampler = _target_spec(tuning.get("sampler", tuning.get("tuner_sampler", "TPESampler")), "optuna.samplers",
                           at("sampler" if "sampler" in tuning else "tuner_sampler"))
    seed = tuning.get("seed")
    if seed is not None:
        if "seed" in sampler:
            raise ConfigError(f"{at('seed')}: the sampler has a seed already; give one")
        sampler["seed"] = seed
    if sampler.get("seed") is not None and (isinstance(sampler["seed"], bool) or not isinstance(sampler["seed"], int)):
        raise ConfigError(f"{at('sampler.seed')}: expects an integer, got {sampler['seed']!r}")
    pruner = tuning.get("pruner")
    pruner = None if pruner in (None, "none", "None") else _target_spec(pruner, "optuna.pruners", at("pruner"))
    if pruner is not None and len(objectives) > 1:
        raise ConfigError(f"{at('pruner')}: Optuna prunes single-objective studies only; drop the pruner or "
                          "keep one objective")
    if pruner is not None and not objectives[0].metric.startswith("val_"):
        raise ConfigError(f"{at('pruner')}: pruning watches the objective at each validation, and "
                          f"'{objectives[0].metric}' is not a validation metric (val_*)")

    storage = tuning.get("storage") or f"sqlite:///{output_dir / 'study.db'}"
    return TuneConfig(
        output_dir=output_dir, recipe_path=recipe_path, recipe_inline=inline if not recipe_path else None,
        method=method, n_trials=_positive_int(tuning.get("n_trials", 10), at("n_trials")),
        sampler=sampler, pruner=pruner, storage=str(storage),
        study_name=str(tuning.get("study_name") or "nemo_like_tune"),
        load_if_exists=_bool(tuning.get("load_if_exists", True), at("load_if_exists")),
        params=params, objectives=objectives,
        n_jobs=_positive_int(tuning.get("n_jobs", 1), at("n_jobs")),
        keep_checkpoints=_choice(tuning.get("keep_checkpoints", "best") or "none", KEEP, at("keep_checkpoints")),
        overrides=overrides, trial_timeout_s=_timeout(tuning.get("trial_timeout_s"), at("trial_timeout_s")),
        sources=dict(sources),
    )


def _search_space(tuning: Any, at: Any) -> list[ParamSpec]:
    params: dict[str, ParamSpec] = {}
    for section, table in (("search_space", None), ("tune_params", None),
                           ("tunable_training_params", oumi_names.TRAINING_PATHS),
                           ("tunable_peft_params", oumi_names.PEFT_PATHS)):
        for name, spec in _mapping(tuning.get(section), at(section)).items():
            where = at(f"{section}.{name}")
            path = oumi_names.oumi_path(str(name), table, where) if table else str(name)
            if path in params:
                raise ConfigError(f"{where}: '{path}' is searched twice")
            params[path] = parse_param(path, spec, lambda sub, key=f"{section}.{name}": at(key + sub))
    if not params:
        raise ConfigError(f"{at('search_space')}: nothing to search; add e.g. "
                          "optimizer.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}")
    return list(params.values())


def _objectives(tuning: Any, at: Any) -> list[Objective]:
    raw = tuning.get("objectives")
    if raw is None and tuning.get("evaluation_metrics") is not None:
        raw = oumi_names.objectives(tuning.get("evaluation_metrics"), tuning.get("evaluation_direction"),
                                    at("evaluation_direction"))
    if raw is None:
        return [Objective("val_loss")]
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"{at('objectives')}: expects a list like [{{metric: val_loss, direction: minimize}}]")
    found: list[Objective] = []
    for index, item in enumerate(raw):
        where = at(f"objectives.{index}")
        item = {"metric": item} if isinstance(item, str) else _mapping(item, where)
        metric_at, direction_at = at(f"objectives.{index}.metric"), at(f"objectives.{index}.direction")
        unknown = sorted(set(item) - {"metric", "direction", "reduce"})
        if unknown:
            raise ConfigError(f"{where}: '{unknown[0]}' is not a key of an objective (metric, direction, reduce)")
        metric = item.get("metric")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"{metric_at}: expects a logged metric name (val_loss, train_loss, tps, ...)")
        direction = DIRECTIONS.get(str(item.get("direction", "minimize")).lower())
        if direction is None:
            raise ConfigError(f"{direction_at}: {item.get('direction')!r} is not minimize or maximize")
        reduce = _choice(item.get("reduce", "last"), REDUCE, at(f"objectives.{index}.reduce"))
        found.append(Objective(metric, direction, reduce))
    if len({o.metric for o in found}) != len(found):
        raise ConfigError(f"{at('objectives')}: a metric is listed twice")
    return found


def _target_spec(value: Any, module: str, where: str) -> dict[str, Any]:
    """A sampler/pruner as ``{_target_: path, **kwargs}``; a bare class name is looked up in ``module``."""
    if isinstance(value, str):
        value = {"_target_": value}
    spec = _mapping(value, where)
    target = spec.get("_target_")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}: expects a class name (e.g. TPESampler) or a mapping with _target_")
    if "." not in target:
        spec["_target_"] = f"{module}.{target}"
    return spec


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not hasattr(value, "items"):
        raise ConfigError(f"{where}: expects a mapping, got {value!r}")
    return {str(k): _plain(v) for k, v in value.items()}


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expects a positive integer, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expects true or false, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: expects a positive number of seconds, got {value!r}")
    return float(value)
