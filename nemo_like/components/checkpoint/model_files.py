"""The model's files of a step directory: the weights for the resume and the consolidated Hugging Face directory.

Why its own part: what is written depends on the run (full weights or an adapter, safetensors
or torch, sharded or not, consolidated or not), and each tensor should be written once: full
weights share one file between ``model/`` and ``model/consolidated/`` (``weight_link``), a
LoRA run's merged export is streamed from the live model (``merged_export``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import save_file

from nemo_like.components.checkpoint.compatibility import unique_entries
from nemo_like.components.checkpoint.merged_export import WEIGHTS_NAME, save_merged_pretrained
from nemo_like.components.checkpoint.model_state import ModelState
from nemo_like.components.checkpoint.torch_file import save_torch
from nemo_like.components.checkpoint.weight_link import link_or_copy, same_tensors

logger = logging.getLogger("nemo_like")


def save_model_files(part: ModelState, model: torch.nn.Module, path_of: Callable[..., str], *, consolidated: bool,
                     save_format: str, full_weights: bool = True) -> None:
    """Write the model entry; ``path_of("model", ...)`` names (and announces) each file or directory before it is
    written. ``full_weights=False``: the weights are already in ``model/`` as sharded files."""
    if part.adapter_only:
        part.save_adapter(model, path_of("model"))
        if consolidated and (getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None)):
            logger.info("quantized base: no merged consolidated model; use `nemo-like merge-lora` on the adapter")
        elif consolidated:  # the adapters folded in, tensor by tensor: plain transformers loads it as is
            save_merged_pretrained(model, part.tokenizer, path_of("model", "consolidated"))
        return
    out_dir = path_of("model", "consolidated") if consolidated else None
    if out_dir is not None:
        model.save_pretrained(out_dir, safe_serialization=True)
        if part.tokenizer is not None:
            part.tokenizer.save_pretrained(out_dir)
    if not full_weights:
        return
    state = {name: t.detach().contiguous().cpu() for name, t in unique_entries(model).items()}
    if save_format != "safetensors":
        save_torch(state, path_of("model", "model.pt"))
        return
    target = path_of("model", "model.safetensors")
    written = os.path.join(out_dir, WEIGHTS_NAME) if out_dir is not None else None
    if written is not None and same_tensors(written, state):  # the same tensors: one file, two names
        link_or_copy(written, target)
    else:
        save_file(state, target, metadata={"format": "pt"})
