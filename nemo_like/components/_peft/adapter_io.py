"""Save and load LoRA/DoRA adapters in the Hugging Face PEFT on-disk format.

Writing PEFT's format (``adapter_model.safetensors`` + ``adapter_config.json``) means
a checkpoint of ours opens with ``peft.PeftModel.from_pretrained``, vLLM, lm-eval's
``peft=`` option and anything else in that ecosystem, without conversion.

Key mapping (ours -> PEFT):
    <path>.lora_A.weight        -> base_model.model.<path>.lora_A.weight
    <path>.lora_B.weight        -> base_model.model.<path>.lora_B.weight
    <path>.lora_magnitude       -> base_model.model.<path>.lora_magnitude_vector   (DoRA)

PEFT always applies dropout to the adapter input; a run trained with
``dropout_position: post`` therefore behaves identically under PEFT at inference
time (no dropout) but not if PEFT is used to continue training with dropout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nemo_like.components._peft.lora import PeftConfig, lora_modules

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# Module-name fragments added by torch wrappers (compile, activation checkpointing,
# FSDP1); they are not part of the architecture, so they never reach the file.
_WRAPPER_FRAGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
# Our parameter name -> PEFT's parameter name, relative to the adapted layer.
_OURS_TO_PEFT = {"lora_A.weight": "lora_A.weight", "lora_B.weight": "lora_B.weight",
                 "lora_magnitude": "lora_magnitude_vector"}


def _clean_name(name: str) -> str:
    for fragment in _WRAPPER_FRAGMENTS:
        name = name.replace(fragment, "")
    return name


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    """Gather a sharded (DTensor) parameter; plain tensors pass through."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu").contiguous()


def _adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """PEFT key -> our live parameter, for every adapted layer of ``model``."""
    out: dict[str, nn.Parameter] = {}
    for name, module in lora_modules(model):
        params = dict(module.named_parameters(recurse=True))
        for ours, theirs in _OURS_TO_PEFT.items():
            if ours in params:
                out[f"{PEFT_PREFIX}{_clean_name(name)}.{theirs}"] = params[ours]
    return out


def _peft_target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    """Leaf names when they select exactly the adapted layers under PEFT's rule, else full names.

    PEFT matches a listed name ``t`` against module ``k`` when ``k == t`` or
    ``k.endswith('.' + t)``; leaf names keep the config short and readable.
    """
    adapted_set = set(adapted)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    inside = tuple(n + "." for n in adapted)
    for raw, _ in model.named_modules():
        name = _clean_name(raw)
        if not name or name in adapted_set or name.startswith(inside):
            continue
        if name.rsplit(".", 1)[-1] in leaves:
            return sorted(adapted)
    return leaves


def save_peft_adapter(
    model: nn.Module,
    peft_config: PeftConfig,
    out_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write the adapters of ``model`` as a PEFT LoRA adapter directory; returns the directory."""
    params = _adapter_params(model)
    if not params:
        raise ValueError("save_peft_adapter: the model has no LoRA layers; apply_lora_to_linear_modules first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: _full_tensor(p) for k, p in params.items()}, str(out / ADAPTER_WEIGHTS_NAME),
              metadata={"format": "pt"})

    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    adapted = [_clean_name(n) for n, _ in lora_modules(model)]
    alpha = peft_config.alpha
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": peft_config.dim,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": float(peft_config.dropout),
        "target_modules": _peft_target_modules(model, adapted),
        "use_dora": bool(peft_config.use_dora),
        "use_rslora": False,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (out / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_peft_adapter(model: nn.Module, in_dir: str | os.PathLike) -> int:
    """Copy adapter tensors from a PEFT adapter directory into ``model``'s LoRA layers.

    The model must already carry matching adapters (same layers, rank and DoRA
    setting); any missing, unexpected or mis-shaped tensor is refused with a
    ``ValueError`` before anything is copied. Returns the number of tensors loaded.
    """
    path = Path(in_dir)
    weights = path / ADAPTER_WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"load_peft_adapter: no {ADAPTER_WEIGHTS_NAME} in {path}")
    params = _adapter_params(model)
    if not params:
        raise ValueError("load_peft_adapter: the model has no LoRA layers; apply_lora_to_linear_modules first")
    state = load_file(str(weights))

    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(p.shape)}"
        for k, p in params.items()
        if k in state and tuple(state[k].shape) != tuple(p.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
        raise ValueError(f"load_peft_adapter: {weights} does not fit this model: " + "; ".join(problems))

    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key].to(device=param.device, dtype=param.dtype))
    return len(params)
