"""The sections of the GRPO recipe: the SFT recipe's, with ``grpo:`` (sampling and the policy-gradient
loss), ``generation:`` (the rollout backend), ``rewards:`` (a list of reward functions with weights) and
``reference:`` (the KL reference), checked before torch or transformers are imported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from nemo_like.config.errors import ConfigError
from nemo_like.config.typed_sections import check_target_arguments, located
from nemo_like.recipes.builders.rewards import reward_name
from nemo_like.recipes.llm.sft_config import SFT_SCHEMA, SFTSections, check_training_config

__all__ = ["GRPO_SCHEMA", "GRPOSection", "GRPOSections", "GenerationSection", "KLReferenceSection",
           "check_grpo_config", "kl_reference_mode"]

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


@dataclass
class GRPOSection:
    """``grpo:``: how many completions per prompt and how they are sampled, and the loss (TRL's names).

    One step takes ``step_scheduler.global_batch_size`` prompts (``local_batch_size`` per micro-batch
    and rank), samples ``num_generations`` completions for each, scores them and makes
    ``num_iterations`` optimizer updates on them. ``zero_std_groups: drop`` leaves out of the update
    the groups whose completions all got the same reward (their advantages are zero: only the KL term
    would move them). ``sampler``: ``multinomial`` draws as ``generate`` does (the same tokens under
    one seed); ``inverse_cdf`` draws from the same distribution with one random number per row, which
    makes sampling from a large vocabulary several times cheaper. ``mask_truncated_completions``: completions cut at ``max_completion_length``
    add nothing to the loss (DAPO). ``layout``: how completions are scored in the update: one row per
    completion (``padded``) or one ``[prompt, c_1, ..., c_G]`` row per group, each prompt computed once
    (``shared_prompt``, for attention backends that read a dense mask); ``auto`` picks shared_prompt
    where the backend allows it.
    """

    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    sampler: Literal["multinomial", "inverse_cdf"] = "multinomial"
    num_iterations: int = 1
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    importance_sampling_level: Literal["token", "sequence"] = "token"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    zero_std_groups: Literal["keep", "drop"] = "keep"
    mask_truncated_completions: bool = False
    layout: Literal["auto", "padded", "shared_prompt"] = "auto"

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"grpo.num_generations: at least 2 completions per prompt are needed to compare them, "
                              f"got {self.num_generations!r}")
        for name in ("max_completion_length", "num_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"grpo.{name}: must be a positive integer, got {getattr(self, name)!r}")
        if not self.temperature > 0:
            raise ConfigError(f"grpo.temperature: must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"grpo.top_p: must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"grpo.top_k: must be >= 0 (0 or null: off), got {self.top_k!r}")
        if self.beta < 0:
            raise ConfigError(f"grpo.beta: must be >= 0, got {self.beta!r}")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ConfigError(f"grpo.epsilon: the clipping range must be >= 0, got {self.epsilon!r} / "
                              f"{self.epsilon_high!r}")


@dataclass
class GenerationSection:
    """``generation:``: the rollout backend. ``hf``: the model itself, batched with a KV cache, each prompt
    encoded once per group (CPU and GPU). ``vllm``: not available in this build."""

    backend: Literal["hf", "vllm"] = "hf"

    def __post_init__(self) -> None:
        if self.backend == "vllm":
            raise ConfigError("generation.backend: vllm rollouts are not available in this build; use hf")


@dataclass
class KLReferenceSection:
    """``reference:``: the policy the KL term (``grpo.beta > 0``) is taken against: the policy with its
    adapters off (LoRA runs, no copy) or a frozen copy (full fine-tunes). Unset: by the ``peft`` section.
    With ``beta: 0`` no reference exists."""

    mode: Literal["adapter_off", "frozen_copy"] | None = None


@dataclass
class GRPOSections(SFTSections):
    grpo: GRPOSection | None = None
    generation: GenerationSection | None = None
    reference: KLReferenceSection | None = None


GRPO_RECIPE_NAMES = ("TrainGRPORecipe", "nemo_like.recipes.llm.train_grpo.TrainGRPORecipe")

GRPO_SCHEMA = dataclasses.replace(
    SFT_SCHEMA,
    name="GRPO",
    built=SFT_SCHEMA.built - {"loss_fn"},
    required=SFT_SCHEMA.required | {"rewards"},
    lists=SFT_SCHEMA.lists | {"rewards"},
    typed={**{k: v for k, v in SFT_SCHEMA.typed.items() if k not in ("packed_sequence", "neftune", "qat")},
           "grpo": GRPOSection, "generation": GenerationSection, "reference": KLReferenceSection},
    defaulted=SFT_SCHEMA.defaulted | {"grpo", "generation", "reference"},
    refused={**SFT_SCHEMA.refused,
             "loss_fn": "the GRPO loss is set in the grpo section (loss_type, beta, epsilon, epsilon_high, "
                        "importance_sampling_level, scale_rewards)",
             "packed_sequence": "not supported by the GRPO recipe (completions are scored in padded rows)",
             "neftune": "not supported by the GRPO recipe (sampling and scoring would see different embeddings)",
             "qat": "not supported by the GRPO recipe; quantization-aware training is the SFT recipe's"},
)

_REWARD_KEYS = frozenset({"weight", "name"})


def kl_reference_mode(sections: GRPOSections, has_peft: bool) -> str:
    """``none`` without a KL term, else the section's mode or the default for the model."""
    if sections.grpo.beta == 0:
        return "none"
    return sections.reference.mode or ("adapter_off" if has_peft else "frozen_copy")


def check_grpo_config(cfg: Any, world_size: int | None = None) -> GRPOSections:
    """Every section checked (as the SFT recipe's), then the rewards list and the reference against the model."""
    sections = check_training_config(cfg, GRPO_SCHEMA, GRPOSections, GRPO_RECIPE_NAMES, world_size)
    sources = getattr(cfg, "sources", None)
    rewards = cfg.get("rewards")
    if not rewards:
        raise ConfigError(f"{located('rewards', sources)}: give at least one reward function "
                          "({_target_: ..., weight: ...})")
    names = []
    for i, entry in enumerate(rewards):
        where = f"rewards.{i}"
        if not hasattr(entry, "items") or not isinstance(entry.get("_target_"), str):
            raise ConfigError(f"{located(where, sources)}: expected a mapping with a _target_ (a reward function's "
                              f"import path), got {entry!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{located(where + '.weight', sources)}: expected a number, got {weight!r}")
        check_target_arguments(entry, where, sources, extra=_REWARD_KEYS)
        names.append(reward_name(entry))
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{located('rewards', sources)}: two rewards are named {duplicated[0]!r}; give each a "
                          "distinct 'name' (metrics are logged by name)")
    has_peft = "peft" in cfg
    if sections.reference.mode == "adapter_off" and sections.grpo.beta > 0 and not has_peft:
        raise ConfigError(f"{located('reference.mode', sources)}: adapter_off needs LoRA adapters (a peft section); "
                          "use frozen_copy for a full fine-tune")
    if sections.distributed.cp_size > 1 or sections.distributed.tp_size > 1:
        raise ConfigError(f"{located('distributed', sources)}: GRPO generates with the whole model on each rank; "
                          "use tp_size: 1 and cp_size: 1 (data parallel ranks generate for their own prompts)")
    return sections
