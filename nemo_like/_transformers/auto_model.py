"""NeMoAutoModelForCausalLM: load or build a trainable plain transformers causal LM.

The loader returns the model transformers itself would return (a
``LlamaForCausalLM`` and so on), so everything downstream (PEFT, FSDP2,
``save_pretrained``, lm-eval) sees an ordinary model. What it adds is the path
resolution of :mod:`nemo_like._transformers.embedded` (offline hub, embedded
SmolLM2), a forgiving ``torch_dtype``, and GGUF files loaded as dense weights
with the GGUF quantizer removed, since that quantizer would otherwise refuse
training and saving.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from nemo_like._transformers.embedded import hub_load_error, resolve_pretrained_path, split_gguf_path
from nemo_like._transformers.fused_swiglu import apply_fused_swiglu
from nemo_like._transformers.gguf_dense import drop_gguf_quantizer, is_gguf_config, load_dense_gguf, quiet_gguf_loading
from nemo_like.components.dtypes import parse_dtype
from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

DTypeLike = str | torch.dtype | None
ConfigLike = PretrainedConfig | dict[str, Any] | str | os.PathLike

# NeMo AutoModel options that select its own kernels; here the model is always the
# plain transformers one, so they are accepted for YAML compatibility.
_NEMO_ONLY_OPTIONS = ("force_hf", "use_liger_kernel", "sdpa_method", "use_te")


def resolve_dtype(value: DTypeLike) -> torch.dtype | str:
    """A YAML dtype ("bf16", "torch.bfloat16", torch.float32) as torch's; None and "auto" stay "auto"."""
    if value is None or str(value).strip().lower() == "auto":
        return "auto"
    try:
        return parse_dtype(value, "torch_dtype", optional=False)
    except ConfigError:  # "auto" is a choice here too; the loader names the section that passed the value
        raise ValueError(f"Unknown torch_dtype {value!r}; use 'auto', 'float32', 'bfloat16' or 'float16'") from None


def _pick_dtype(torch_dtype: DTypeLike, kwargs: dict[str, Any]) -> torch.dtype | str:
    """Accept both spellings: ``torch_dtype`` (NeMo, transformers 4) and ``dtype`` (transformers 5)."""
    dtype = kwargs.pop("dtype", None)
    if dtype is not None and torch_dtype not in (None, "auto") and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
        raise ValueError(f"Both dtype={dtype!r} and torch_dtype={torch_dtype!r} were given; pass only one.")
    return resolve_dtype(dtype if dtype is not None else torch_dtype)


def _drop_nemo_only_options(kwargs: dict[str, Any]) -> None:
    for name in _NEMO_ONLY_OPTIONS:
        if name in kwargs and kwargs.pop(name) and name != "force_hf":
            logger.warning("%s is not available in nemo_like; loading the plain transformers model.", name)


def load_gguf_quantized(
    directory: str,
    gguf_file: str,
    quantization_config: Any,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = "sdpa",
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a GGUF file under another quantization (bitsandbytes for QLoRA).

    transformers refuses a quantization config together with a GGUF file, so the GGUF
    is unpacked to dense weights, written to a temporary safetensors directory and
    loaded from there with the config; the weights end up in memory, the files go.
    """
    import tempfile

    dense = load_dense_gguf(directory, gguf_file, dtype, attn_implementation, **kwargs)
    with tempfile.TemporaryDirectory(prefix="nemo_like_gguf_") as tmp:
        dense.save_pretrained(tmp)
        del dense
        model = AutoModelForCausalLM.from_pretrained(
            tmp, dtype=dtype, attn_implementation=attn_implementation, quantization_config=quantization_config, **kwargs
        )
    model.name_or_path = model.config._name_or_path = os.path.join(directory, gguf_file)
    return model


def _with_sdpa_fallback(load, attn_implementation: str | None) -> PreTrainedModel:
    """Run ``load(attn)``; fall back to eager attention if the architecture lacks SDPA."""
    try:
        return load(attn_implementation)
    except ValueError as err:
        if attn_implementation != "sdpa" or "sdpa" not in str(err).lower():
            raise
        logger.warning("This architecture does not support SDPA attention; using eager attention.")
        return load("eager")


def _check_attention_available(attn_implementation: str | None) -> None:
    """A flash-attention kernel needs its package and a CUDA GPU: say so in one line, before loading weights."""
    if not attn_implementation or not attn_implementation.startswith("flash_attention"):
        return
    import importlib.util

    package = "flash_attn_interface" if attn_implementation == "flash_attention_3" else "flash_attn"
    missing = [why for why, absent in (("a CUDA GPU", not torch.cuda.is_available()),
                                       (f"the {package} package", importlib.util.find_spec(package) is None)) if absent]
    if missing:
        raise ConfigError(f"model.attn_implementation: {attn_implementation!r} needs {' and '.join(missing)}, "
                          "which this machine lacks; use attn_implementation: sdpa")


def _backend_attention(backend: Any, attn_implementation: str | None) -> str | None:
    """The attention kernel when ``backend`` (a ``BackendConfig`` or its fields) is given.

    ``backend.attn`` decides unless ``attn_implementation`` names another kernel itself, which
    is a contradiction the caller must resolve.
    """
    if backend is None:
        return attn_implementation
    from nemo_like.components.models.common.backend import BackendConfig

    chosen = BackendConfig.from_section(backend).attn_implementation
    if attn_implementation not in (None, "sdpa", chosen):
        raise ValueError(f"attn_implementation={attn_implementation!r} contradicts backend.attn "
                         f"(= {chosen!r}); give only one")
    return chosen


def _with_fused_swiglu(model: PreTrainedModel, fused: bool) -> PreTrainedModel:
    if fused and apply_fused_swiglu(model) == 0:
        logger.warning("fused_swiglu: %s has no SwiGLU MLP (gate/up/down with SiLU); left as it is.",
                       type(model).__name__)
    return model


class NeMoAutoModelForCausalLM:
    """Entry point named like NeMo AutoModel's; returns plain transformers models."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Use NeMoAutoModelForCausalLM.from_pretrained(...) or .from_config(...).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        torch_dtype: DTypeLike = "auto",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        fused_swiglu: bool = False,
        backend: Any = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a causal LM from a local directory, a ``.gguf`` file or a hub id.

        ``torch_dtype="auto"`` keeps the checkpoint's dtype, and float32 for
        GGUF files, whose quantized blocks have no training dtype of their own.
        A ``quantization_config`` (bitsandbytes, for QLoRA) goes to transformers as
        is; a GGUF source is unpacked first, since transformers refuses the pair.
        ``fused_swiglu`` routes the MLPs through ``SwiGLUFunction`` (half the MLP
        activations kept for the backward; see ``fused_swiglu.py``). ``backend`` (a
        ``BackendConfig``) picks the kernels; its ``attn`` sets the attention implementation.
        """
        attn_implementation = _backend_attention(backend, attn_implementation)
        _check_attention_available(attn_implementation)
        model = cls._load_pretrained(
            pretrained_model_name_or_path, *model_args, torch_dtype=torch_dtype,
            attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, gguf_file=gguf_file, **kwargs
        )
        return _with_fused_swiglu(model, fused_swiglu)

    @classmethod
    def _load_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        torch_dtype: DTypeLike,
        attn_implementation: str | None,
        trust_remote_code: bool,
        gguf_file: str | None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        dtype = _pick_dtype(torch_dtype, kwargs)
        _drop_nemo_only_options(kwargs)
        name = os.fspath(pretrained_model_name_or_path)
        path, gguf_file = split_gguf_path(resolve_pretrained_path(name), gguf_file)

        qconfig = kwargs.get("quantization_config")
        if gguf_file is not None and qconfig is not None and not is_gguf_config(qconfig):
            gguf_dtype = torch.float32 if dtype == "auto" else dtype
            qconfig = kwargs.pop("quantization_config")
            return _with_sdpa_fallback(
                lambda attn: load_gguf_quantized(
                    path, gguf_file, qconfig, gguf_dtype, attn, trust_remote_code=trust_remote_code, **kwargs
                ),
                attn_implementation,
            )
        if gguf_file is not None:
            gguf_dtype = torch.float32 if dtype == "auto" else dtype
            logger.info("unpacking %s to dense %s weights", gguf_file, gguf_dtype)
            with quiet_gguf_loading():
                return _with_sdpa_fallback(
                    lambda attn: load_dense_gguf(
                        path, gguf_file, gguf_dtype, attn, trust_remote_code=trust_remote_code, **kwargs
                    ),
                    attn_implementation,
                )

        def load(attn: str | None) -> PreTrainedModel:
            return AutoModelForCausalLM.from_pretrained(
                path, *model_args, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code, **kwargs
            )

        from safetensors import SafetensorError

        try:
            model = _with_sdpa_fallback(load, attn_implementation)
        except OSError as err:
            if os.path.exists(path):
                raise
            raise hub_load_error(name, err) from err
        except SafetensorError as err:  # a truncated or corrupted weights file: name the directory holding it
            raise ValueError(f"{name}: the weights cannot be read ({err}); the *.safetensors files there are "
                             f"damaged or incomplete") from err
        return drop_gguf_quantizer(model)

    @classmethod
    def from_config(
        cls,
        config: ConfigLike,
        *model_args: Any,
        torch_dtype: DTypeLike = "auto",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        fused_swiglu: bool = False,
        backend: Any = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Build a randomly initialised causal LM from a config object, a dict or a config directory.

        ``torch_dtype="auto"`` uses the config's dtype when it names one, else float32.
        ``fused_swiglu`` and ``backend`` as in ``from_pretrained``.
        """
        attn_implementation = _backend_attention(backend, attn_implementation)
        _check_attention_available(attn_implementation)
        dtype = _pick_dtype(torch_dtype, kwargs)
        _drop_nemo_only_options(kwargs)
        config = _as_config(config, trust_remote_code)
        if dtype == "auto":
            dtype = _config_dtype(config)

        def build(attn: str | None) -> PreTrainedModel:
            return AutoModelForCausalLM.from_config(
                config,
                *model_args,
                dtype=dtype,
                attn_implementation=attn,
                trust_remote_code=trust_remote_code,
                **kwargs,
            )

        return _with_fused_swiglu(_with_sdpa_fallback(build, attn_implementation), fused_swiglu)


def _as_config(config: ConfigLike, trust_remote_code: bool) -> PretrainedConfig:
    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, dict):
        fields = dict(config)
        if "model_type" not in fields:
            raise ValueError("A config dict needs a 'model_type' key (for example 'llama').")
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    if isinstance(config, (str, os.PathLike)):
        name = os.fspath(config)
        path = resolve_pretrained_path(name)
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except OSError as err:
            if os.path.exists(path):
                raise
            raise hub_load_error(name, err) from err
    raise TypeError(f"config must be a PretrainedConfig, a dict or a path, not {type(config).__name__}.")


def _config_dtype(config: PretrainedConfig) -> torch.dtype:
    value = getattr(config, "dtype", None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value != "auto":
        resolved = resolve_dtype(value)
        if isinstance(resolved, torch.dtype):
            return resolved
    return torch.float32
