"""LoRA and DoRA adapters for ``nn.Linear`` layers, in plain torch.

LoRA adds a trainable low-rank update to a frozen linear layer,

    y = x W^T + b + scale * B(A(x)),      scale = alpha / dim,

with ``A`` of shape [dim, in] and ``B`` of shape [out, dim]; ``B`` starts at zero so
the adapted model starts exactly equal to the base model.

DoRA (Liu et al., 2024) splits the adapted weight into a direction and a learned
per-output-row magnitude ``m``:

    W' = m * (W + scale * B A) / ||W + scale * B A||_row.

As in the paper (section 4.3) and HF PEFT, the row norm is treated as a constant
(detached), which saves memory and is what makes the numbers here match PEFT's.

The wrapper keeps the base layer's own ``weight`` / ``bias`` parameters, so the
state-dict keys of the base model do not move (``...q_proj.weight``) and the adapter
keys sit beside them (``...q_proj.lora_A.weight``).
"""

from __future__ import annotations

import contextlib

import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from nemo_like.components._peft.lora_addmm import lora_addmm
from nemo_like.components._peft.module_matcher import ModuleMatcher
from nemo_like.components.dtypes import parse_dtype
from nemo_like.components.quantization.qlora import dequantize_bnb_weight, is_bnb_linear

_DEFAULT_TARGETS = ["*_proj"]
_triton_warned = False


def _triton_interpreting() -> bool:
    """Triton's CPU interpreter (``TRITON_INTERPRET=1``) runs the kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_env_reason() -> str | None:
    """Why this process cannot run Triton kernels at all; checked once, since every forward asks."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'nemo_like[triton]')"
    if not torch.cuda.is_available() and not _triton_interpreting():
        return "CUDA is not available"
    return None


def _triton_unusable_reason(use_dora: bool = False, dropout: float = 0.0) -> str | None:
    """Why the fused Triton LoRA kernel cannot serve this setting, or ``None`` if it can."""
    env_reason = _triton_env_reason()
    if env_reason is not None:
        return env_reason
    if use_dora:
        return "DoRA has no fused kernel"
    if dropout > 0:
        return "dropout > 0 is applied by the torch path in training (eval steps use the kernel)"
    return None


def _warn_triton_fallback(reason: str, stacklevel: int) -> None:
    """One warning per process, whether config or layer notices first: the reason does not change per layer."""
    global _triton_warned
    if not _triton_warned:
        _triton_warned = True
        warnings.warn(f"peft.use_triton: not using the fused Triton LoRA kernel because {reason}; "
                      "running the torch path", UserWarning, stacklevel=stacklevel + 1)


@dataclass
class PeftConfig:
    """LoRA / DoRA settings, built from the ``peft:`` section of a recipe YAML.

    ``target_modules`` and ``exclude_modules`` are ``*`` globs anchored on the full
    module name (a bare name like ``q_proj`` also matches any ``...q_proj``).
    ``match_all_linear`` adapts every ``nn.Linear`` except the output head. With
    neither set, ``*_proj`` is used. ``dropout_position`` ``pre`` drops the adapter's
    input (as HF PEFT does), ``post`` drops the adapter's output. ``lora_A_init``
    ``xavier`` is Xavier-normal, ``kaiming`` is Kaiming-uniform with a=sqrt(5) (HF
    PEFT's default). ``use_triton`` runs plain LoRA layers through the fused Triton
    kernels (``lora_kernel.py``) when their input is on CUDA; DoRA, dropout in
    training, or a machine without CUDA/Triton run the torch path, with one warning.
    """

    target_modules: list[str] | str = field(default_factory=list)
    exclude_modules: list[str] | str = field(default_factory=list)
    match_all_linear: bool = False
    dim: int = 8
    alpha: float = 32
    dropout: float = 0.0
    dropout_position: str = "post"
    lora_A_init: str = "xavier"
    use_dora: bool = False
    use_triton: bool = False
    lora_dtype: Any = None

    def __post_init__(self) -> None:
        self.target_modules = _as_str_list(self.target_modules, "target_modules")
        self.exclude_modules = _as_str_list(self.exclude_modules, "exclude_modules")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"peft.dim: must be a positive integer, got {self.dim!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"peft.alpha: must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"peft.dropout: must be in [0, 1), got {self.dropout!r}")
        if self.dropout_position not in ("pre", "post"):
            raise ValueError(f"peft.dropout_position: {self.dropout_position!r} is not one of 'pre', 'post'")
        if self.lora_A_init not in ("xavier", "kaiming"):
            raise ValueError(f"peft.lora_A_init: {self.lora_A_init!r} is not one of 'xavier', 'kaiming'")
        if self.target_modules and self.match_all_linear:
            raise ValueError("peft.target_modules: cannot be combined with match_all_linear=True; set only one")
        self.lora_dtype = parse_dtype(self.lora_dtype, "peft.lora_dtype")
        if not self.target_modules and not self.match_all_linear:
            warnings.warn(
                "peft: neither target_modules nor match_all_linear is set; adapting modules matching '*_proj'",
                UserWarning,
                stacklevel=3,
            )
            self.target_modules = list(_DEFAULT_TARGETS)
        if self.use_triton:
            reason = _triton_unusable_reason(self.use_dora, float(self.dropout))
            if reason is not None:
                _warn_triton_fallback(reason, stacklevel=3)

    @property
    def scale(self) -> float:
        """The factor applied to the low-rank update, ``alpha / dim``."""
        return self.alpha / self.dim

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (dtype as a string) for logs and checkpoints."""
        out = asdict(self)
        out["lora_dtype"] = None if self.lora_dtype is None else str(self.lora_dtype).removeprefix("torch.")
        return out


def _as_str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"peft.{name}: expected a pattern or a list of patterns, got {value!r}") from None
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"peft.{name}: every pattern must be a string, got {items!r}")
    return items


class LinearLoRA(nn.Module):
    """A frozen ``nn.Linear`` plus a LoRA (optionally DoRA) adapter.

    ``weight`` and ``bias`` are the very parameter objects of the wrapped layer, so
    memory is shared and checkpoint keys are unchanged. A bitsandbytes 4-bit/8-bit layer
    (QLoRA) is different: its packed weight only multiplies through bitsandbytes' own
    kernels, so the layer is kept whole as the submodule ``base_layer`` (HF PEFT's name)
    and called; ``dense_weight()`` dequantizes it where DoRA or merging need the matrix.
    """

    def __init__(
        self,
        base: nn.Linear,
        dim: int = 8,
        alpha: float = 32,
        dropout: float = 0.0,
        dropout_position: str = "post",
        lora_A_init: str = "xavier",
        use_dora: bool = False,
        lora_dtype: torch.dtype | None = None,
        use_triton: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LinearLoRA wraps nn.Linear, got {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.quantized = is_bnb_linear(base)
        if self.quantized:
            self.base_layer = base
        else:
            self.weight = base.weight
            self.register_parameter("bias", base.bias)
        self.dim = dim
        self.alpha = alpha
        self.scale = alpha / dim
        self.dropout_p = float(dropout)
        self.dropout_position = dropout_position
        self.lora_A_init = lora_A_init
        self.use_dora = use_dora
        self.use_triton = use_triton and not self.quantized  # the fused kernel reads a dense weight
        # Adapters over packed weights train in float32 unless told otherwise (as HF PEFT does).
        adapter_dtype = lora_dtype or (torch.float32 if self.quantized else base.weight.dtype)
        factory = {"device": base.weight.device, "dtype": adapter_dtype}
        self.lora_A = nn.Linear(self.in_features, dim, bias=False, **factory)
        self.lora_B = nn.Linear(dim, self.out_features, bias=False, **factory)
        self.dropout = nn.Dropout(self.dropout_p) if self.dropout_p > 0 else nn.Identity()
        if use_dora:
            self.lora_magnitude = nn.Parameter(torch.empty(self.out_features, **factory))
        self.adapter_enabled = True  # off: the layer is its base layer (a DPO reference without a model copy)
        self.merged: torch.Tensor | None = None  # set by ``adapters_merged``: one matmul while sampling
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A random, B zero (adapted layer == base layer); DoRA magnitude = row norm of W."""
        if self.lora_A_init == "xavier":
            nn.init.xavier_normal_(self.lora_A.weight)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if self.use_dora:
            self.lora_magnitude.copy_(self._adapted_row_norm())

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized:
            return self.base_layer(x)
        return F.linear(x, self.weight, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The frozen base weight as a dense ``[out, in]`` matrix (dequantized to fp32 for bitsandbytes)."""
        return dequantize_bnb_weight(self.base_layer) if self.quantized else self.weight

    def base_bias(self) -> torch.Tensor | None:
        """The frozen base bias, wherever the wrapped layer keeps it."""
        return self.base_layer.bias if self.quantized else self.bias

    @torch.no_grad()
    def _adapted_row_norm(self) -> torch.Tensor:
        """Row-wise L2 norm of ``W + scale * B A`` in fp32, outside autograd (DoRA's constant)."""
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float()
        return torch.linalg.norm(self.dense_weight().float() + self.scale * delta, dim=1)

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        """Fused kernel only for plain LoRA on CUDA with no active dropout; else warn once and use torch."""
        reason = _triton_unusable_reason(self.use_dora, self.dropout_p if self.training else 0.0)
        if reason is None and not x.is_cuda and not _triton_interpreting():
            reason = "the layer input is not on a CUDA device"
        if reason is not None:
            _warn_triton_fallback(reason, stacklevel=3)
        return reason is None

    def _addmm_applies(self, x: torch.Tensor) -> bool:
        """The one-node torch path: plain LoRA, dense base, dropout (if any) before the adapter, one dtype, no autocast."""
        return (
            not self.use_dora
            and not self.quantized
            and (self.dropout_position == "pre" or not (self.training and self.dropout_p > 0))
            and x.dtype == self.weight.dtype == self.lora_A.weight.dtype
            and not torch.is_autocast_enabled(x.device.type)
            and not any(isinstance(t, DTensor) for t in (self.weight, self.lora_A.weight))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self._base_forward(x)
        if self.merged is not None:
            return F.linear(x, self.merged, self.bias)
        if self.use_triton and self._kernel_applies(x):
            from nemo_like.components._peft.lora_kernel import lora_linear

            return lora_linear(x, self.weight, self.bias, self.lora_A.weight, self.lora_B.weight, self.scale)
        if self._addmm_applies(x):
            x_lora = self.dropout(x) if self.training and self.dropout_p > 0 else None
            return lora_addmm(x, self.weight, self.bias, self.lora_A.weight, self.lora_B.weight, self.scale, x_lora)
        result = self._base_forward(x)
        x_lora = x.to(self.lora_A.weight.dtype)
        if self.dropout_position == "pre":
            x_lora = self.dropout(x_lora)
        lora_out = self.lora_B(self.lora_A(x_lora)).to(result.dtype)
        if not self.use_dora:
            lora_out = lora_out * self.scale
            if self.dropout_position == "post":
                lora_out = self.dropout(lora_out)
            return result + lora_out

        # DoRA: W' x = g * (W x + scale * B A x) with g = m / ||W + scale B A|| (detached).
        g = (self.lora_magnitude / self._adapted_row_norm().to(self.lora_magnitude.dtype)).to(result.dtype)
        if self.dropout_position == "pre" and self.training and self.dropout_p > 0:
            # The rescaled base term must see the same dropped-out input as the adapter.
            base_part = F.linear(x_lora.to(result.dtype), self.dense_weight().to(result.dtype))
        else:
            bias = self.base_bias()
            base_part = result if bias is None else result - bias
        lora_part = g * lora_out * self.scale
        if self.dropout_position == "post":
            lora_part = self.dropout(lora_part)
        return result + (g - 1) * base_part + lora_part

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The single weight matrix equal to this layer in eval mode (computed in fp32)."""
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float()
        merged = self.dense_weight().float() + self.scale * delta
        if self.use_dora:
            merged = (self.lora_magnitude.float() / torch.linalg.norm(merged, dim=1)).unsqueeze(1) * merged
        # A quantized base has no dense dtype of its own: the merge keeps the adapter's.
        return merged.to(self.lora_A.weight.dtype if self.quantized else self.weight.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the adapter folded in (the bias object is reused)."""
        bias = self.base_bias()
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device="meta")
        frozen = self.quantized or not self.weight.requires_grad
        linear.weight = nn.Parameter(self.merged_weight(), requires_grad=not frozen)
        if bias is not None:
            linear.bias = bias
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.base_bias() is not None}, "
            f"dim={self.dim}, alpha={self.alpha}, dropout={self.dropout_p} ({self.dropout_position}), "
            f"use_dora={self.use_dora}"
        )


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LinearLoRA]]:
    """Yield ``(name, module)`` for every adapted layer, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, LinearLoRA):
            yield name, module


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Within the block every adapted layer computes its base layer alone (the model before LoRA),
    as HF PEFT's ``disable_adapter()``; a preference method's reference model at no memory cost."""
    layers = [module for _, module in lora_modules(model)]
    if not layers:
        raise ValueError("adapters_disabled: the model has no LoRA layer to switch off")
    states = [layer.adapter_enabled for layer in layers]
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield
    finally:
        for layer, state in zip(layers, states):
            layer.adapter_enabled = state


@contextlib.contextmanager
def adapters_merged(model: nn.Module) -> Iterator[None]:
    """Inside, each plain LoRA/DoRA layer over a dense, unsharded weight multiplies by one merged matrix
    (``W + scale B A``, made once on entry) instead of three: for sampling, where the adapter does not
    change and every decoding step pays the small matmuls of 200-odd adapters. Costs one copy of the
    adapted weights while it lasts; the layers are untouched on exit. No gradients flow through it."""
    layers = [m for _, m in lora_modules(model) if m.adapter_enabled and not m.quantized
              and not isinstance(m.weight, DTensor) and not isinstance(m.lora_A.weight, DTensor)]
    try:
        for layer in layers:
            layer.merged = layer.merged_weight()
        yield
    finally:
        for layer in layers:
            layer.merged = None


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".lora_" not in n and not n.endswith(".base_layer")]


def _no_match_error(model: nn.Module, matcher: ModuleMatcher) -> ValueError:
    names = _linear_names(model)
    leaves = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    what = "match_all_linear" if matcher.match_all_linear else f"target_modules {matcher.target_modules}"
    return ValueError(
        f"peft.target_modules: {what} (exclude {matcher.exclude_modules}) matched no nn.Linear layer; "
        f"this model's linear layers include {names[:4]} (leaf names {leaves[:10]})"
    )


def apply_lora_to_linear_modules(model: nn.Module, peft_config: PeftConfig) -> int:
    """Freeze the whole model, then wrap every matched ``nn.Linear`` in a ``LinearLoRA``.

    Returns the number of adapted layers. The output head is never adapted under
    ``match_all_linear``. Raises ``ValueError`` if nothing matches, since training a
    model with zero trainable parameters is always a configuration mistake.
    """
    matcher = ModuleMatcher(peft_config.target_modules, peft_config.exclude_modules, peft_config.match_all_linear)
    for param in model.parameters():
        param.requires_grad_(False)

    head = None
    if matcher.match_all_linear and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
    adapted_prefixes = [name + "." for name, _ in lora_modules(model)]
    targets = [
        name
        for name, module in model.named_modules()
        if module is not head
        and not isinstance(module, LinearLoRA)
        and not any(name.startswith(p) for p in adapted_prefixes)
        and matcher.match(name, module)
    ]
    if not targets:
        if adapted_prefixes:
            raise ValueError("peft: the model already carries LoRA adapters on every matched layer")
        raise _no_match_error(model, matcher)
    unused = matcher.unused_patterns(targets)
    if unused:
        warnings.warn(f"peft.target_modules: patterns {unused} matched no linear layer", UserWarning, stacklevel=2)

    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, leaf)
        setattr(
            parent,
            leaf,
            LinearLoRA(
                base,
                dim=peft_config.dim,
                alpha=peft_config.alpha,
                dropout=peft_config.dropout,
                dropout_position=peft_config.dropout_position,
                lora_A_init=peft_config.lora_A_init,
                use_dora=peft_config.use_dora,
                lora_dtype=peft_config.lora_dtype,
                use_triton=peft_config.use_triton,
            ),
        )
    return len(targets)


def merge_lora_weights(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain ``nn.Linear`` layers back.

    The result has the base model's architecture and state-dict keys, so
    ``save_pretrained`` output loads with plain transformers.
    """
    if isinstance(model, LinearLoRA):
        return model.to_linear()
    for name, module in list(lora_modules(model)):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, module.to_linear())
    return model
