"""The model entry of a checkpoint: the module, and what its files need to know about it.

The checkpointer asks this part how the weights are written rather than knowing about
adapters itself: with ``adapter`` set (the LoRA/DoRA settings of a run that trains only
adapters), ``model/`` is an HF-PEFT adapter and the consolidated copy is the base with the
adapters folded in (``merged_export``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nemo_like.components._peft.adapter_io import load_peft_adapter, save_peft_adapter
from nemo_like.components._peft.lora import apply_lora_to_linear_modules


@dataclass
class ModelState:
    """``parts["model"]`` of a checkpoint."""

    model: nn.Module
    tokenizer: Any = None  # written next to the consolidated weights
    adapter: Any = None  # the PEFT settings when only adapters train
    base_model_name_or_path: str | None = None  # recorded in the adapter's config

    @property
    def adapter_only(self) -> bool:
        return self.adapter is not None

    def save_adapter(self, model: nn.Module, directory: str) -> None:
        """``model``'s adapter tensors as an HF-PEFT directory (``model`` may be an unsharded copy)."""
        save_peft_adapter(model, self.adapter, directory, base_model_name_or_path=self.base_model_name_or_path)

    def adapter_loader(self, directory: str) -> Callable[[], None]:
        """Loads the adapter in ``directory`` into the live model when called (it checks every tensor first)."""
        return lambda: load_peft_adapter(self.model, directory)

    def add_adapters(self, clone: nn.Module) -> None:
        """Give a freshly built copy of the base the same adapter layout (for an unsharded copy)."""
        if self.adapter is not None:
            apply_lora_to_linear_modules(clone, self.adapter)


def as_model_state(part: Any) -> ModelState:
    """``parts["model"]`` may be a plain module: full weights, no tokenizer."""
    return part if isinstance(part, ModelState) else ModelState(part)


def adapter_file(model_dir: str) -> str:
    return os.path.join(model_dir, "adapter_model.safetensors")
