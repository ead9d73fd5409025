"""The sections of the DPO recipe: the SFT recipe's, with ``dpo:`` (the loss) and ``reference:`` (the
reference policy) added, checked before torch or transformers are imported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from nemo_like.config.errors import ConfigError
from nemo_like.config.typed_sections import located
from nemo_like.recipes.llm.sft_config import SFT_SCHEMA, SFTSections, check_training_config

__all__ = ["DPO_SCHEMA", "DPOSection", "DPOSections", "ReferenceSection", "check_dpo_config", "reference_mode"]

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down", "simpo", "sft")
REFERENCE_FREE = ("simpo", "sft")


@dataclass
class DPOSection:
    """``dpo:``: the preference loss (``DPOLoss``'s arguments, TRL's names)."""

    beta: float = 0.1
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    rpo_alpha: float | None = None
    gamma: float = 0.5

    def __post_init__(self) -> None:
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        unknown = [t for t in types if t not in LOSS_TYPES]
        if not types or unknown:
            raise ConfigError(f"dpo.loss_type: {unknown or types!r} not among {list(LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            raise ConfigError(f"dpo.loss_weights: {len(self.loss_weights)} weight(s) for {len(types)} loss type(s)")
        if not self.beta > 0:
            raise ConfigError(f"dpo.beta: must be > 0, got {self.beta!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing: must be in [0, 0.5), got {self.label_smoothing!r}")

    @property
    def needs_reference(self) -> bool:
        types = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        return any(t not in REFERENCE_FREE for t in types)


@dataclass
class ReferenceSection:
    """``reference:``: where the reference policy's log-probabilities come from.

    ``adapter_off``: the policy with its LoRA adapters switched off (LoRA runs; no copy);
    ``frozen_copy``: a second, frozen model (full fine-tunes; sharded like the policy);
    ``precomputed``: one pass before training stores every pair's reference log-probs (kept in
    checkpoints); ``none``: reference-free losses (SimPO, SFT). Unset: ``none`` when the loss needs
    no reference, else ``adapter_off`` with a ``peft`` section and ``frozen_copy`` without.
    """

    mode: Literal["adapter_off", "frozen_copy", "precomputed", "none"] | None = None
    batch_size: int | None = None  # pairs per forward of the precomputing pass (default: local_batch_size)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"reference.batch_size: must be a positive integer, got {self.batch_size!r}")


@dataclass
class DPOSections(SFTSections):
    dpo: DPOSection | None = None
    reference: ReferenceSection | None = None


DPO_RECIPE_NAMES = ("TrainDPORecipe", "nemo_like.recipes.llm.train_dpo.TrainDPORecipe")

_PACKING_HINT = ("DPO packs a micro-batch's pairs through its collater: use dataloader.collate_fn: "
                 "nemo_like.components.datasets.llm.preference_collater.packed_preference_collater "
                 "and remove the section")

DPO_SCHEMA = dataclasses.replace(
    SFT_SCHEMA,
    name="DPO",
    built=SFT_SCHEMA.built - {"loss_fn"},
    typed={**{k: v for k, v in SFT_SCHEMA.typed.items() if k not in ("packed_sequence", "neftune", "qat")},
           "dpo": DPOSection, "reference": ReferenceSection},
    defaulted=SFT_SCHEMA.defaulted | {"dpo", "reference"},
    refused={**SFT_SCHEMA.refused,
             "loss_fn": "the DPO loss is set in the dpo section (beta, loss_type, loss_weights, label_smoothing, "
                        "rpo_alpha, gamma)",
             "packed_sequence": _PACKING_HINT,
             "neftune": "not supported by the DPO recipe (the reference forward would see the noise too)",
             "qat": "not supported by the DPO recipe; quantization-aware training is the SFT recipe's"},
)


def reference_mode(sections: DPOSections, has_peft: bool) -> str:
    """The reference mode this run uses (the section's, or the default for its loss and model)."""
    if sections.reference.mode is not None:
        return sections.reference.mode
    if not sections.dpo.needs_reference:
        return "none"
    return "adapter_off" if has_peft else "frozen_copy"


def check_dpo_config(cfg: Any, world_size: int | None = None) -> DPOSections:
    """Every section checked (as the SFT recipe's), then the reference mode against the loss and the model."""
    sections = check_training_config(cfg, DPO_SCHEMA, DPOSections, DPO_RECIPE_NAMES, world_size)
    sources = getattr(cfg, "sources", None)
    has_peft = "peft" in cfg
    mode = reference_mode(sections, has_peft)
    if mode == "none" and sections.dpo.needs_reference:
        raise ConfigError(f"{located('reference.mode', sources)}: none, but dpo.loss_type {sections.dpo.loss_type!r} "
                          "compares against a reference; use simpo / sft, or another reference mode")
    if sections.distributed.cp_size > 1:
        raise ConfigError(f"{located('distributed.cp_size', sources)}: DPO scores whole sequences; context parallel "
                          "is not supported, use cp_size: 1")
    if mode == "adapter_off" and not has_peft:
        raise ConfigError(f"{located('reference.mode', sources)}: adapter_off needs LoRA adapters (a peft section); "
                          "use frozen_copy or precomputed for a full fine-tune")
    return sections
