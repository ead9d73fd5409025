"""NeMoAutoModelForImageTextToText: load or build a trainable plain transformers VLM.

Like :class:`NeMoAutoModelForCausalLM`, it returns exactly what transformers'
``AutoModelForImageTextToText`` returns (``LlavaForConditionalGeneration`` and so
on) and adds only path resolution (offline hub, the ``nemo-like/tiny-*`` models),
a forgiving dtype, NeMo-only options accepted, an SDPA -> eager fallback for
vision towers without SDPA, and one-line errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import AutoModelForImageTextToText, PretrainedConfig, PreTrainedModel

from nemo_like._transformers.auto_model import (
    ConfigLike,
    DTypeLike,
    _as_config,
    _backend_attention,
    _check_attention_available,
    _config_dtype,
    _drop_nemo_only_options,
    _pick_dtype,
    _with_sdpa_fallback,
)
from nemo_like._transformers.embedded import hub_load_error, resolve_pretrained_path

# NeMo AutoModel routes VLM attention through its own SDPA patch; the plain model uses SDPA already.
_SILENT_NEMO_OPTIONS = ("use_sdpa_patching",)


def _prepare_kwargs(torch_dtype: DTypeLike, dtype: DTypeLike, kwargs: dict[str, Any]) -> Any:
    """The one dtype of the two spellings, with NeMo-only options removed from ``kwargs``."""
    if dtype is not None:
        kwargs["dtype"] = dtype
    chosen = _pick_dtype(torch_dtype, kwargs)
    _drop_nemo_only_options(kwargs)
    for name in _SILENT_NEMO_OPTIONS:
        kwargs.pop(name, None)
    return chosen


def _apply_text_overrides(config: PretrainedConfig, overrides: Any) -> PretrainedConfig:
    """Set ``text_config`` fields from a YAML mapping (NAM's ``model.text_config: {use_cache: false}``)."""
    if not isinstance(overrides, Mapping):
        raise TypeError(f"model.text_config: expected a mapping of field overrides, got {type(overrides).__name__}")
    text = config.get_text_config()
    for key, value in overrides.items():
        if not hasattr(text, key):
            raise ValueError(f"model.text_config.{key}: {type(text).__name__} has no field {key!r}")
        setattr(text, key, value)
    return config


def _not_a_vlm(what: str, err: ValueError) -> ValueError:
    """transformers lists every VLM class here; one line saying what the model is reads better."""
    config_class = str(err).split("<class '", 1)[-1].split("'>", 1)[0].rsplit(".", 1)[-1]
    return ValueError(f"{what}: {config_class} is not an image-text-to-text model config; "
                      "load a text-only model with NeMoAutoModelForCausalLM")


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _is_unknown_config(err: ValueError) -> bool:
    return "Unrecognized configuration class" in str(err)


class NeMoAutoModelForImageTextToText:
    """Entry point named like NeMo AutoModel's; returns plain transformers VLMs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Use NeMoAutoModelForImageTextToText.from_pretrained(...) or .from_config(...).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        torch_dtype: DTypeLike = "auto",
        dtype: DTypeLike = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        backend: Any = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a VLM from a local directory or a hub id (``nemo-like/tiny-*`` build offline).

        ``torch_dtype`` / ``dtype`` as in ``NeMoAutoModelForCausalLM``; ``attn_implementation``
        None lets transformers choose per sub-model; ``text_config`` (a mapping) overrides
        fields of the language model's config; ``backend`` picks the attention kernel.
        """
        attn_implementation = _backend_attention(backend, attn_implementation)
        _check_attention_available(attn_implementation)
        chosen = _prepare_kwargs(torch_dtype, dtype, kwargs)
        name = os.fspath(pretrained_model_name_or_path)
        path = resolve_pretrained_path(name)
        if "text_config" in kwargs:
            config = kwargs.pop("config", None) or _as_config(path, trust_remote_code)
            kwargs["config"] = _apply_text_overrides(config, kwargs.pop("text_config"))

        def load(attn: str | None) -> PreTrainedModel:
            return AutoModelForImageTextToText.from_pretrained(
                path, *model_args, dtype=chosen, attn_implementation=attn, trust_remote_code=trust_remote_code, **kwargs
            )

        from safetensors import SafetensorError

        try:
            return _with_sdpa_fallback(load, attn_implementation)
        except ValueError as err:
            if _is_unknown_config(err):
                raise _not_a_vlm(name, err) from None
            if os.path.exists(path):
                raise ValueError(f"{name}: not a loadable model directory ({_first_line(err)})") from err
            raise
        except OSError as err:
            if os.path.exists(path):
                raise OSError(f"{name}: not a loadable model directory ({_first_line(err)})") from err
            raise hub_load_error(name, err) from err
        except SafetensorError as err:
            raise ValueError(f"{name}: the weights cannot be read ({err}); the *.safetensors files there are "
                             f"damaged or incomplete") from err

    @classmethod
    def from_config(
        cls,
        config: ConfigLike,
        *model_args: Any,
        torch_dtype: DTypeLike = "auto",
        dtype: DTypeLike = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        backend: Any = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Build a randomly initialised VLM from a config object, a dict, a config directory or a hub id.

        ``torch_dtype="auto"`` uses the config's dtype when it names one, else float32.
        """
        attn_implementation = _backend_attention(backend, attn_implementation)
        _check_attention_available(attn_implementation)
        chosen = _prepare_kwargs(torch_dtype, dtype, kwargs)
        resolved = _as_config(config, trust_remote_code)
        if "text_config" in kwargs:
            resolved = _apply_text_overrides(resolved, kwargs.pop("text_config"))
        if chosen == "auto":
            chosen = _config_dtype(resolved)

        def build(attn: str | None) -> PreTrainedModel:
            return AutoModelForImageTextToText.from_config(
                resolved, *model_args, dtype=chosen, attn_implementation=attn, trust_remote_code=trust_remote_code,
                **kwargs,
            )

        try:
            return _with_sdpa_fallback(build, attn_implementation)
        except ValueError as err:
            if _is_unknown_config(err):
                raise _not_a_vlm("from_config", err) from None
            raise

