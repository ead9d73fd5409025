"""A LoRA/DoRA run's consolidated directory: the base model with the adapters folded in, without a copy of the model.

Why: the live model must keep its adapters (training goes on after a save), so the merged
weights cannot be made in place, and a deep copy of the model to merge doubles the memory
a save needs. Here every tensor of the export is made when it is written
(``streamed_safetensors``): a base tensor is written as it is, an adapted layer's weight is
merged (``LinearLoRA.merged_weight``, the same float32 fold as ``merge_lora_weights``) and
dropped. The names are the ones ``save_pretrained`` would write: the base state dict
without adapter tensors, tied duplicates dropped and conversions reverted the way
transformers does it. Where transformers would change more than names' presence (a
conversion that renames or reshapes), the merged tensors go through ``save_pretrained`` itself
(no copy of the model still, only the merged matrices).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nemo_like.components._peft.lora import lora_modules
from nemo_like.components.checkpoint.streamed_safetensors import Entry, write_streamed

logger = logging.getLogger("nemo_like")

WEIGHTS_NAME = "model.safetensors"


def merged_state(model: nn.Module, state: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, Callable[[], torch.Tensor]]:
    """The base model's state dict names, each with a maker of its merged tensor (adapter tensors left out);
    ``state``: ``model.state_dict()`` when the caller has it already."""
    adapted = dict(lora_modules(model))
    out: dict[str, Callable[[], torch.Tensor]] = {}
    for key, tensor in (model.state_dict() if state is None else state).items():
        owner, _, leaf = key.rpartition(".")
        layer = _owning_layer(adapted, owner, key)
        if layer is None:
            out[key] = (lambda t=tensor: t)
        elif owner in adapted and leaf == "weight":
            out[key] = layer.merged_weight
        elif owner in adapted and leaf == "bias":
            out[key] = (lambda t=tensor: t)
        # else: lora_A / lora_B / lora_magnitude / a quantized base layer's parts: not in the export
    return out


def _owning_layer(adapted: dict[str, nn.Module], owner: str, key: str) -> nn.Module | None:
    """The adapted layer ``key`` belongs to (its own tensor or a submodule's), or None."""
    if owner in adapted:
        return adapted[owner]
    for name, layer in adapted.items():
        if key.startswith(name + "."):
            return layer
    return None


def _saved_names(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str] | None:
    """The names ``save_pretrained`` keeps of ``state`` (meta tensors: nothing is computed), or None when it would
    rename or convert tensors rather than only drop tied duplicates."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:
        return None
    try:
        kept = remove_tied_weights_from_state_dict(dict(state), model)
        reverted = revert_weight_conversion(model, dict(kept))
    except Exception:  # a private helper of another shape: the plain way
        return None
    if set(reverted) != set(kept) or any(tuple(reverted[k].shape) != tuple(state[k].shape) for k in kept):
        return None
    return [k for k in state if k in kept]


def save_merged_pretrained(model: nn.Module, tokenizer: Any, out_dir: str) -> None:
    """``model`` with its adapters folded in, as a directory ``from_pretrained`` loads; ``model`` is not changed."""
    live = model.state_dict()
    makers = merged_state(model, live)
    shapes = {k: live[k] for k in makers}  # a merged weight has its base weight's dtype and shape
    names = _saved_names(model, {k: t.to("meta") for k, t in shapes.items()})
    os.makedirs(out_dir, exist_ok=True)
    if names is None:
        model.save_pretrained(out_dir, state_dict={k: make() for k, make in makers.items()}, safe_serialization=True)
    else:
        model.save_pretrained(out_dir, state_dict={}, safe_serialization=True)  # config and generation config only
        entries: list[Entry] = [(k, shapes[k].dtype, tuple(shapes[k].shape), makers[k]) for k in names]
        write_streamed(os.path.join(out_dir, WEIGHTS_NAME), entries, {"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
