"""A SwiGLU MLP that keeps two tensors for its backward instead of four.

Why: ``down(silu(gate(x)) * up(x))`` written as three ops keeps ``gate(x)``, ``silu(...)``,
``up(x)`` and their product alive until the backward, four ``[tokens, intermediate]``
tensors per layer, the largest activations of a Llama-style block. ``SwiGLUFunction``
keeps ``gate(x)`` and ``up(x)`` and recomputes the sigmoid in the backward (an elementwise
op, cheap next to the matmuls). The product still reaches ``down`` as its input, which a
LoRA adapter on ``down`` keeps; a frozen ``down`` keeps nothing.

``apply_fused_swiglu(model)`` switches every Llama-style MLP (``gate_proj``, ``up_proj``,
``down_proj`` and a SiLU ``act_fn``) of a loaded model to it; the results equal the
original forward to float rounding.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up`` saving only ``gate`` and ``up``."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        grad_up = grad * silu
        # d silu / d gate = sig * (1 + gate * (1 - sig)) = sig + silu * (1 - sig)
        grad_gate = silu.mul_(1 - sig).add_(sig).mul_(grad).mul_(up)
        return grad_gate, grad_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return SwiGLUFunction.apply(gate, up)


def _fused_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def _is_swiglu_mlp(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    is_silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    return is_silu and all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj"))


def apply_fused_swiglu(model: nn.Module) -> int:
    """Route every SwiGLU MLP of ``model`` through ``SwiGLUFunction``; returns how many were switched."""
    count = 0
    for module in model.modules():
        if _is_swiglu_mlp(module):
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
