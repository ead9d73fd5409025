"""The sections of the vision-language SFT recipe: the SFT recipe's, with ``processor:`` (how images and text
become model inputs) and ``freeze_config:`` (which parts train), checked before torch or transformers load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nemo_like.config.errors import ConfigError
from nemo_like.config.typed_sections import located
from nemo_like.recipes.llm.sft_config import SFT_SCHEMA, SFTSections, check_training_config

__all__ = ["VLM_RECIPE_NAMES", "VLM_SCHEMA", "FreezeConfigSection", "VLMSections", "check_vlm_config",
           "is_vlm_config"]

# ``recipe:`` values naming this recipe (NAM's name and this library's import path).
VLM_RECIPE_NAMES = ("FinetuneRecipeForVLM", "nemo_like.recipes.vlm.finetune.FinetuneRecipeForVLM")
VLM_MODEL_TARGETS = ("NeMoAutoModelForImageTextToText", "AutoModelForImageTextToText")


@dataclass
class FreezeConfigSection:
    """``freeze_config:``: parts kept as loaded (NeMo AutoModel's names). The vision tower is frozen by default:
    it was trained on far more images than a fine-tune brings."""

    freeze_vision_tower: bool = True
    freeze_embeddings: bool = False
    freeze_language_model: bool = False
    freeze_audio_tower: bool = False  # NAM's keys for audio/video models: image-text models have no such parts
    freeze_video_embedder: bool = False


VLM_SCHEMA = dataclasses.replace(
    SFT_SCHEMA,
    name="VLM SFT",
    built=SFT_SCHEMA.built | {"processor"},
    typed={**{k: v for k, v in SFT_SCHEMA.typed.items() if k not in ("neftune",)},
           "freeze_config": FreezeConfigSection},
    defaulted=SFT_SCHEMA.defaulted | {"freeze_config"},
    refused={**SFT_SCHEMA.refused,
             "neftune": "NEFTune noise on the input embeddings is for text-only SFT; remove the section"},
)


@dataclass
class VLMSections(SFTSections):
    freeze_config: FreezeConfigSection | None = None


def check_vlm_config(cfg: Any, world_size: int | None = None) -> VLMSections:
    """Every section checked (see ``check_training_config``); packing is refused: image tensors are not packed here."""
    sections = check_training_config(cfg, VLM_SCHEMA, VLMSections, VLM_RECIPE_NAMES, world_size)
    packing = sections.packed_sequence
    if packing is not None and (packing.packed_sequence_size or 0) > 0:
        raise ConfigError(f"{located('packed_sequence.packed_sequence_size', cfg.sources)}: packing is not "
                          "supported for vision-language data; set it to 0 (rows are padded per batch)")
    return sections


def is_vlm_config(cfg: Any) -> bool:
    """Whether a config is for this recipe: its ``recipe:`` names it, or its model is an image-text-to-text model."""
    recipe = cfg.get("recipe", None)
    name = recipe.get("_target_") if hasattr(recipe, "get") else recipe
    if isinstance(name, str) and name in VLM_RECIPE_NAMES:
        return True
    target = cfg.get("model._target_", None)
    return isinstance(target, str) and any(t in target.split(".") for t in VLM_MODEL_TARGETS)
