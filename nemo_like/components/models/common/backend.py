"""BackendConfig: which kernels a model's layers run on (``model.backend`` in a recipe).

The model here is always the plain transformers one, so the choices that exist are the
ones transformers' own layers offer: attention through SDPA, eager or flex attention,
torch linear layers, and transformers' RMSNorm (which normalises in float32 whatever the
weights' dtype: the ``torch_fp32`` choice). Transformer Engine, DeepEP/HybridEP dispatch,
grouped-GEMM experts, FP8 and CUDA graphs are not available; asking for one is a one-line
error naming the field, before any model loads. Fields that only tune kernels this library
does not have (``dispatcher_num_sms``, ``enable_fsdp_optimizations``, ...) change nothing
about the result and are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

# Import paths a YAML may give as ``model.backend._target_``.
BACKEND_TARGETS = (
    "nemo_like.components.models.common.BackendConfig",
    "nemo_like.components.models.common.utils.BackendConfig",
    "nemo_like.components.models.common.backend.BackendConfig",
)

# backend attn name -> transformers' attn_implementation
_ATTN = {"sdpa": "sdpa", "eager": "eager", "flex": "flex_attention"}
_TE = "Transformer Engine is not available here"
_REFUSED: dict[str, dict[Any, str]] = {
    "attn": {"te": _TE, "tilelang": "TileLang kernels are not available here", "cudnn": "cuDNN sparse attention "
             "is not available here", "magi": "MagiAttention is not available here"},
    "linear": {"te": _TE, "quack": "QuACK kernels are not available here"},
    "rms_norm": {"te": _TE, "quack": "QuACK kernels are not available here"},
    "rope": {"quack": "QuACK kernels are not available here"},
    "experts": {"te": _TE, "gmm": "grouped_gemm is not available here",
                "torch_mm_mxfp8": "MXFP8 expert GEMMs are not available here"},
    "dispatcher": {name: f"the {name} MoE token dispatcher needs expert parallel, which is not supported here"
                   for name in ("deepep", "hybridep", "uccl_ep", "mok")},
    "fake_balanced_gate": {True: "a fake balanced MoE router (benchmarking only) is not available here"},
    "compile_attn": {True: "per-attention compile is not available here; use the compile: section"},
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "attn": ("sdpa", "eager", "flex"),
    "linear": ("torch",),
    "rms_norm": ("torch", "torch_fp32"),
    "rope": ("torch",),
    "experts": ("torch", "torch_mm"),
    "dispatcher": ("torch",),
}


@dataclass
class BackendConfig:
    """Kernel choices for the model's layers; see the module docstring for what exists here.

    ``attn`` picks transformers' ``attn_implementation`` (sdpa, eager, flex). ``experts``
    ``torch``/``torch_mm`` both mean transformers' own MoE expert computation (the same sums).
    ``rope_fusion`` is always off (a fused RoPE kernel rotates in a different precision),
    as ``enable_deepep`` is ignored: both with a warning.
    """

    attn: str = "sdpa"
    linear: str = "torch"
    rms_norm: str = "torch_fp32"
    rope: str = "torch"
    rope_fusion: bool = False
    experts: str = "torch"
    dispatcher: str = "torch"
    dispatcher_num_sms: int = 20
    dispatcher_share_token_dispatcher: bool = True
    dispatcher_async_dispatch: bool = False
    mok: dict[str, Any] | None = None
    enable_deepep: bool | None = None
    fake_balanced_gate: bool = False
    fake_gate_noise: float = 0.0
    enable_hf_state_dict_adapter: bool = True
    enable_fsdp_optimizations: bool = False
    te_fp8: dict[str, Any] | None = None
    gate_precision: str | None = None
    compile_attn: bool = False
    cuda_graph: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name, refused in _REFUSED.items():
            value = getattr(self, name)
            if value in refused:
                hint = f"; use {name}: {_CHOICES[name][0]}" if name in _CHOICES else ""
                raise ConfigError(f"model.backend.{name}: {value!r} is not supported here: {refused[value]}{hint}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"model.backend.{name}: expected one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        if self.te_fp8 is not None:
            raise ConfigError(f"model.backend.te_fp8: Transformer Engine FP8 is not supported here: {_TE}")
        if self.gate_precision is not None:
            raise ConfigError("model.backend.gate_precision: a separate MoE router precision is not supported here; "
                              "the router runs in the model's dtype (remove the field)")
        if isinstance(self.cuda_graph, dict) and self.cuda_graph.get("enabled"):
            raise ConfigError("model.backend.cuda_graph.enabled: CUDA graphs are not supported here")
        if self.rope_fusion:
            logger.warning("model.backend.rope_fusion: fused RoPE is always off (it rotates in a different "
                           "precision than the unfused path); using the model's own RoPE")
            self.rope_fusion = False
        if self.enable_deepep is not None:
            logger.warning("model.backend.enable_deepep: no longer an option and ignored; set dispatcher instead")
            self.enable_deepep = None

    @property
    def attn_implementation(self) -> str:
        """transformers' name for the chosen attention kernel."""
        return _ATTN[self.attn]

    @classmethod
    def from_section(cls, section: Any, key: str = "model.backend") -> "BackendConfig":
        """Build from a YAML mapping (its ``_target_``, when given, must name this class)."""
        if isinstance(section, cls):
            return section
        if not hasattr(section, "items"):
            raise ConfigError(f"{key}: expected a mapping of backend fields, got {section!r}")
        values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
        target = values.pop("_target_", None)
        if target is not None and str(target).strip() not in BACKEND_TARGETS:
            raise ConfigError(f"{key}._target_: {target!r} is not a backend config; use {BACKEND_TARGETS[0]}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown backend field (fields: {', '.join(sorted(known))})")
        return cls(**values)
