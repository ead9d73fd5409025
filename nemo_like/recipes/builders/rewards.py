"""The ``rewards:`` list of a recipe as callables: what GRPO scores completions with.

A reward is TRL's ``f(prompts, completions, **columns) -> list[float]``. A function target is the reward
itself (its other keys bound as keyword arguments); a class target is built with them (a reward with
settings). Targets pass the config gate like any other, so a function from a file needs user modules on.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.config.target_gate import resolve_target

Reward = Callable[..., list[float]]


def reward_name(entry: Any) -> str:
    """A reward's name in the metrics: its ``name``, else its function or class name (``a.b.fn``, ``file.py:fn``)."""
    return str(entry.get("name") or entry["_target_"].rsplit(":", 1)[-1].rsplit(".", 1)[-1])


def build_rewards(entries: list[Any]) -> list[tuple[str, float, Reward]]:
    """``rewards:`` as (name, weight, callable), in order."""
    rewards = []
    for i, entry in enumerate(entries):
        node = ConfigNode({k: v for k, v in entry.items() if k not in ("weight", "name")}, path=f"rewards.{i}")
        target = resolve_target(node["_target_"], f"rewards.{i}._target_")
        kwargs = {k: v for k, v in node.to_dict().items() if k != "_target_"}
        if inspect.isclass(target):
            reward = node.instantiate()
        else:
            reward = functools.partial(target, **kwargs) if kwargs else target
        if not callable(reward):
            raise ConfigError(f"rewards.{i}._target_: {entry['_target_']} does not give a callable reward")
        rewards.append((reward_name(entry), float(entry.get("weight", 1.0)), reward))
    return rewards
