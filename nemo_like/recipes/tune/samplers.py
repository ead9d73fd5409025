"""Samplers and pruners from their ``_target_``, through the library's gate like any recipe target.

A sampler is built afresh for each trial with the seed ``seed + slot`` (the slot: how many
trials the study had counted before this one). So a seeded study proposes the same parameters
whether it ran in one go or was stopped and resumed, and a trial lost to a kill is proposed
again in its slot instead of being skipped.
"""

from __future__ import annotations

from typing import Any

from nemo_like.components.tuning.search_space import ParamSpec
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode


def build_sampler(spec: dict[str, Any], params: list[ParamSpec], slot: int = 0, where: str = "tuning.sampler") -> Any:
    """``where`` names the section in errors (``tuning.sampler (tune.yaml:5)``)."""
    import optuna

    kwargs = dict(spec)
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + slot
    if kwargs["_target_"].endswith("GridSampler") and "search_space" not in kwargs:
        kwargs["search_space"] = _grid(params, where)
    sampler = _build(kwargs, where)
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(f"{where}._target_: {spec['_target_']} is not an Optuna sampler")
    return sampler


def build_pruner(spec: dict[str, Any] | None, where: str = "tuning.pruner") -> Any:
    """The pruner of ``spec``, or Optuna's NopPruner when there is none."""
    import optuna

    if spec is None:
        return optuna.pruners.NopPruner()
    pruner = _build(dict(spec), where)
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ConfigError(f"{where}._target_: {spec['_target_']} is not an Optuna pruner")
    return pruner


def _build(spec: dict[str, Any], where: str) -> Any:
    """Through the gate (``ConfigNode.instantiate``); its message names the key, ``where`` adds the file:line."""
    try:
        return ConfigNode(spec, path=where.split(" ")[0]).instantiate()
    except (TypeError, ConfigError) as err:  # a refused target, a keyword the class does not take
        text = str(err)
        key = where.split(" ")[0]
        raise ConfigError(f"{where}{text[len(key):]}" if text.startswith(key) else f"{where}: {text}") from None


def _grid(params: list[ParamSpec], where: str) -> dict[str, list[Any]]:
    """GridSampler's grid from the search space: categorical choices and stepped ranges."""
    grid: dict[str, list[Any]] = {}
    for p in params:
        values = p.grid_values()
        if values is None:
            raise ConfigError(f"{where}: GridSampler needs a grid; '{p.path}' is a continuous range "
                              "(give it a step, or make it categorical)")
        grid[p.path] = values
    return grid
