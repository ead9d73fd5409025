"""GGUF files as dense, trainable transformers models: every weight unpacked, the GGUF quantizer removed.

transformers keeps its GGUF quantizer on a model even after it unpacked every weight, and the
quantizer then reports the model as neither trainable nor serializable; both the model loader and
the one-time conversion of the embedded SmolLM2 go through here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

__all__ = ["drop_gguf_quantizer", "is_gguf_config", "load_dense_gguf", "quiet_gguf_loading"]


@contextlib.contextmanager
def quiet_gguf_loading() -> Iterator[None]:
    """transformers' per-tensor bars off while a GGUF is read ("Converting and de-quantizing GGUF tensors",
    "Loading weights", "Writing model shards"): their carriage returns garble a log file, and the caller
    says what happens in one ``nemo_like`` line instead."""
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    hf_logging = transformers.utils.logging
    bars_were_on = hf_logging.is_progress_bar_enabled()
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if original_tqdm is not None:  # the GGUF reader uses tqdm directly, not transformers' switchable one
        gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _is_gguf_quantized(model: PreTrainedModel) -> bool:
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(quantizer, "quantization_config", None) or getattr(model.config, "quantization_config", None)
    return qconfig is not None and is_gguf_config(qconfig)


def drop_gguf_quantizer(model: PreTrainedModel) -> PreTrainedModel:
    """Remove the GGUF quantizer from a model whose weights are already dense.

    transformers keeps the quantizer on a model loaded from GGUF even after it
    unpacked every weight; the quantizer then reports the model as not trainable
    and not serializable. Weights still kept in GGUF blocks are unpacked first.
    """
    if not _is_gguf_quantized(model):
        return model
    quantizer = getattr(model, "hf_quantizer", None)
    packed = any(type(m).__name__.lower().startswith("gguf") for m in model.modules())
    if packed:
        if quantizer is None:
            raise RuntimeError("The GGUF model keeps packed weights but has no quantizer to unpack them.")
        model = quantizer.dequantize(model)  # also removes the quantization config
    elif quantizer is not None:
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and "_is_quantized" in vars(module.config):
            del module.config._is_quantized
    return model


def load_dense_gguf(
    directory: str,
    gguf_file: str,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = "sdpa",
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a GGUF file as a dense, trainable model (every weight unpacked to ``dtype``)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always unpack GGUF weights
        GgufConfig = None
    if GgufConfig is not None:
        kwargs.setdefault("quantization_config", GgufConfig(gguf_file=gguf_file, dequantize=True))
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=gguf_file, dtype=dtype, attn_implementation=attn_implementation, **kwargs
    )
    return drop_gguf_quantizer(model)


def is_gguf_config(qconfig: Any) -> bool:
    method = qconfig.get("quant_method") if isinstance(qconfig, dict) else getattr(qconfig, "quant_method", None)
    return str(getattr(method, "value", method)).lower() == "gguf"
