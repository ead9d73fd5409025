"""Fold a saved LoRA/DoRA adapter into its base model and write one plain transformers directory.

A PEFT run's checkpoints hold only the adapter; serving stacks, ``lm_eval --model hf``
and anyone without PEFT want a single model. The merge happens in float32 on the
full-precision base (also for QLoRA adapters, whose 4-bit base is only a training-time
memory saving), then the result is cast to the requested dtype and saved with its
tokenizer, so ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads it as is.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from nemo_like.components._peft.adapter_io import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    PEFT_PREFIX,
    load_peft_adapter,
)
from nemo_like.components._peft.lora import PeftConfig, apply_lora_to_linear_modules, merge_lora_weights

logger = logging.getLogger("nemo_like")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Adapter-config settings this merge cannot honour; each must keep PEFT's neutral value.
_NEUTRAL = {"use_rslora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
            "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}


def find_adapter_dir(path: str | os.PathLike) -> Path:
    """Accept the adapter directory, a step checkpoint holding it under ``model/``, or a checkpoint root."""
    root = Path(path).expanduser()
    candidates = [root, root / "model"]
    if (root / "LATEST").is_file():
        candidates.append(root / (root / "LATEST").read_text().strip() / "model")
    for candidate in candidates:
        if (candidate / ADAPTER_CONFIG_NAME).is_file() and (candidate / ADAPTER_WEIGHTS_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"merge-lora: no {ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME} in {root} or {root / 'model'}"
    )


def _adapted_modules(adapter_dir: Path) -> list[str]:
    """The exact module paths that carry adapters, read from the tensor names in the file."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS_NAME), framework="pt") as f:
        keys = list(f.keys())
    names = {k.removeprefix(PEFT_PREFIX).rsplit(".lora_A.", 1)[0] for k in keys if ".lora_A." in k}
    if not names:
        raise ValueError(f"merge-lora: {adapter_dir / ADAPTER_WEIGHTS_NAME} holds no lora_A tensors")
    return sorted(names)


def peft_config_from_adapter(adapter_dir: str | os.PathLike) -> tuple[PeftConfig, dict[str, Any]]:
    """Rebuild the adapter's ``PeftConfig`` (targets = exactly the saved layers) and return the raw JSON too."""
    path = Path(adapter_dir)
    raw = json.loads((path / ADAPTER_CONFIG_NAME).read_text())
    if str(raw.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"merge-lora: peft_type {raw.get('peft_type')!r} is not LORA")
    for key, neutral in _NEUTRAL.items():
        value = raw.get(key)
        if value and value != neutral:
            raise ValueError(f"merge-lora: adapter_config.json sets {key}={value!r}, which this merge cannot apply")
    missing = [k for k in ("r", "lora_alpha") if k not in raw]
    if missing:
        raise ValueError(f"merge-lora: {path / ADAPTER_CONFIG_NAME} lacks {missing}")
    config = PeftConfig(
        target_modules=_adapted_modules(path),
        dim=int(raw["r"]),
        alpha=float(raw["lora_alpha"]),
        use_dora=bool(raw.get("use_dora", False)),
    )
    return config, raw


def _save_tokenizer(adapter_dir: Path, base: str, output_dir: Path) -> None:
    """The run's tokenizer when it was saved beside the adapter, else the base model's."""
    from nemo_like._transformers.tokenizer import build_tokenizer

    source = str(adapter_dir) if any((adapter_dir / f).is_file() for f in _TOKENIZER_FILES) else base
    build_tokenizer(source).save_pretrained(output_dir)


def merge_lora_checkpoint(
    adapter_dir: str | os.PathLike,
    base_model: str | None = None,
    output_dir: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = "auto",
) -> Path:
    """Merge the adapter in ``adapter_dir`` into its base and save the full model to ``output_dir``.

    ``base_model`` defaults to the adapter's ``base_model_name_or_path`` and is loaded
    with :class:`NeMoAutoModelForCausalLM` (so hub ids, local dirs, ``.gguf`` files and
    the embedded SmolLM2 all work offline). ``dtype="auto"`` keeps the base checkpoint's
    dtype. Returns the output directory.
    """
    from nemo_like._transformers.auto_model import NeMoAutoModelForCausalLM, resolve_dtype

    if output_dir is None:
        raise ValueError("merge-lora: output_dir is required")
    start = time.perf_counter()
    target = resolve_dtype(dtype)  # a bad dtype fails before the base is loaded
    adapter = find_adapter_dir(adapter_dir)
    peft_config, raw = peft_config_from_adapter(adapter)
    base = base_model or raw.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"merge-lora: {adapter / ADAPTER_CONFIG_NAME} names no base_model_name_or_path; pass --base")

    model = NeMoAutoModelForCausalLM.from_pretrained(base, torch_dtype="auto")
    target = next(model.parameters()).dtype if target == "auto" else target
    model.float()  # fold in float32 whatever the storage dtype; cast once at the end
    apply_lora_to_linear_modules(model, peft_config)
    load_peft_adapter(model, adapter)
    merge_lora_weights(model)
    model.to(target)

    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.config.dtype = target
    model.save_pretrained(out, safe_serialization=True)
    _save_tokenizer(adapter, str(base), out)
    logger.info("merged %d adapted layers of %s into %s (%s) in %.1f s", len(peft_config.target_modules), base,
                out, str(target).removeprefix("torch."), time.perf_counter() - start)
    return out
