"""QLoRA: turn a recipe's ``quantization:`` section into a bitsandbytes load, and keep it trainable.

The base model is loaded through ``transformers.BitsAndBytesConfig`` (4-bit NF4/FP4 or
8-bit weights), then LoRA adapters train on top of the frozen quantized layers. Two
things here exist because the defaults of the libraries underneath do not fit training:

* the YAML section is checked field by field, so a typo or a bad value is one line that
  names the key, not a stack trace from deep inside a model load;
* on CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight into an inference-only
  layout the first time the layer runs in eval mode under ``no_grad`` (a validation
  pass, a generation eval). The repacked layer's kernel has no backward, so from then on
  the gradients of every adapter below it are silently wrong, even in train mode.
  ``prepare_model_for_qlora`` turns that repacking off and undoes any already done.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nemo_like.components.dtypes import FLOATS, parse_dtype

logger = logging.getLogger("nemo_like")

INSTALL_HINT = "pip install 'nemo_like[qlora]'"

# The fields of the section as NeMo AutoModel documents them, with their defaults.
QUANTIZATION_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": False,
    "load_in_8bit": False,
    "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_use_double_quant": False,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_quant_storage": "uint8",
}
# Further BitsAndBytesConfig fields passed through unchanged for users who need them.
_PASSTHROUGH = ("llm_int8_threshold", "llm_int8_skip_modules", "llm_int8_enable_fp32_cpu_offload",
                "llm_int8_has_fp16_weight")
_QUANT_TYPES = ("nf4", "fp4")
_STORAGE_DTYPES = (*FLOATS, "uint8", "int8")


def require_bitsandbytes() -> None:
    """Fail early, in one line, when the optional dependency is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"quantization: needs the bitsandbytes package; install the qlora extra: {INSTALL_HINT}")


def _as_bool(section: Mapping[str, Any], key: str) -> bool:
    value = section[key]
    if not isinstance(value, bool):
        raise ValueError(f"quantization.{key}: expected true or false, got {value!r}")
    return value


def _as_dtype(section: Mapping[str, Any], key: str, allowed: tuple[str, ...] = FLOATS) -> torch.dtype:
    return parse_dtype(section[key], f"quantization.{key}", allowed, optional=False)


def _check_keys(section: Mapping[str, Any]) -> None:
    known = [*QUANTIZATION_DEFAULTS, *_PASSTHROUGH]
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(QUANTIZATION_DEFAULTS)}"
            raise ValueError(f"quantization.{key}: unknown key{hint}")


def create_bnb_config(section: Mapping[str, Any] | None = None, **fields: Any) -> Any:
    """Build a ``transformers.BitsAndBytesConfig`` from the ``quantization:`` section.

    Exactly one of ``load_in_4bit`` / ``load_in_8bit`` must be true. Dtypes are written
    as in YAML (``bfloat16``, ``torch.bfloat16``, ``bf16``). Raises ``ValueError`` with a
    one-line message for a bad key or value and ``ImportError`` naming the ``qlora``
    extra when bitsandbytes is not installed.
    """
    given = {**dict(section or {}), **fields}
    given.pop("_target_", None)  # tolerated: the section is plain data, not a built object
    _check_keys(given)
    merged = {**QUANTIZATION_DEFAULTS, **given}
    load_4bit, load_8bit = _as_bool(merged, "load_in_4bit"), _as_bool(merged, "load_in_8bit")
    if load_4bit and load_8bit:
        raise ValueError("quantization: load_in_4bit and load_in_8bit are both true; set only one")
    if not (load_4bit or load_8bit):
        raise ValueError("quantization: set load_in_4bit: true (QLoRA) or load_in_8bit: true")
    quant_type = str(merged["bnb_4bit_quant_type"]).strip().lower()
    if quant_type not in _QUANT_TYPES:
        raise ValueError(f"quantization.bnb_4bit_quant_type: {merged['bnb_4bit_quant_type']!r} is not one of "
                         f"{list(_QUANT_TYPES)}")
    kwargs: dict[str, Any] = {
        "load_in_4bit": load_4bit,
        "load_in_8bit": load_8bit,
        "bnb_4bit_compute_dtype": _as_dtype(merged, "bnb_4bit_compute_dtype"),
        "bnb_4bit_use_double_quant": _as_bool(merged, "bnb_4bit_use_double_quant"),
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_quant_storage": _as_dtype(merged, "bnb_4bit_quant_storage", _STORAGE_DTYPES),
    }
    if load_8bit and any(k.startswith("bnb_4bit_") for k in given):
        logger.warning("quantization: load_in_8bit is set, so the bnb_4bit_* fields are ignored")
    kwargs.update({k: given[k] for k in _PASSTHROUGH if k in given})

    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**kwargs)


def is_bnb_linear(module: nn.Module) -> bool:
    """True for a bitsandbytes 4-bit or 8-bit linear layer; never imports bitsandbytes itself."""
    bnb_nn = sys.modules.get("bitsandbytes.nn")
    if bnb_nn is None:
        return False
    classes = tuple(c for c in (getattr(bnb_nn, "Linear4bit", None), getattr(bnb_nn, "Linear8bitLt", None)) if c)
    return bool(classes) and isinstance(module, classes)


def dequantize_bnb_weight(module: nn.Module) -> torch.Tensor:
    """The dense ``[out, in]`` weight of a bitsandbytes linear layer, in float32.

    DoRA's weight norm and merging an adapter into its base need the real matrix, which
    bitsandbytes stores as 4-bit blocks or int8 rows with per-row scales.
    """
    import bitsandbytes.functional as bnb_f

    _keep_training_layout(module)  # a CPU-repacked weight has a layout dequantize cannot read
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:
        return bnb_f.dequantize_4bit(weight.data, state).float()
    scales = getattr(weight, "SCB", None)
    if scales is None:
        scales = getattr(getattr(module, "state", None), "SCB", None)
    if scales is None:
        raise ValueError(f"{type(module).__name__}: the 8-bit weight carries no row scales to dequantize with")
    return bnb_f.int8_vectorwise_dequant(weight.data, scales).float()


def _keep_training_layout(module: nn.Module) -> None:
    """Stop a 4-bit layer from repacking for CPU inference, and undo a repack already done."""
    if hasattr(module, "support_avx512bf16_for_cpu"):
        module.support_avx512bf16_for_cpu = False
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        module.quant_state = weight.quant_state


def prepare_model_for_qlora(model: nn.Module) -> int:
    """Make every bitsandbytes layer of ``model`` safe to train through; returns how many there are.

    Call it once after loading, before any forward. Zero means the model target ignored
    ``quantization_config`` (for example a ``from_config`` target), which the recipe reports.
    """
    count = 0
    for module in model.modules():
        if is_bnb_linear(module):
            _keep_training_layout(module)
            count += 1
    return count
