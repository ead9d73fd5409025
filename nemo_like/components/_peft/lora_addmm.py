"""Plain LoRA as one autograd node with in-place ``addmm``: the torch path for every device.

Why: written as modules, ``base(x) + B(A(x)) * scale`` allocates three ``[tokens, out]``
temporaries per adapted layer in the forward (the base output, the adapter output, its
scaled copy) and as many in the backward. On a CPU, where freed blocks stay in the heap,
those temporaries are what grows a training process's resident memory, not the tensors
kept for the backward. Here the adapter term is added into the base output in place
(``out.addmm_(x A^T, B^T, alpha=scale)``), the input gradient likewise, and the node
keeps only ``x`` (alive anyway) and the ``[tokens, r]`` product ``x A^T``. The arithmetic
is the same matmuls in the same order, so results match the module form to float
rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class LoRAAddmmFunction(torch.autograd.Function):
    """``F.linear(x, W, b) + scale * (x' A^T) B^T`` saving ``x'`` and ``x' A^T`` only.

    ``x'`` is the adapter's input: ``x`` itself, or ``x`` after dropout (then passed as a
    separate tensor, and its gradient returned separately for the dropout to route back).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        x_lora: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        a2 = x2 if x_lora is None else x_lora.reshape(-1, x.shape[-1])
        out = F.linear(x2, weight, bias)
        xa = a2.mm(lora_a.t())
        out.addmm_(xa, lora_b.t(), alpha=scale)
        keep_x = x2 if ctx.needs_input_grad[2] else None  # the base input only matters for an unfrozen weight
        ctx.save_for_backward(keep_x, a2, weight, lora_a, lora_b, xa)
        ctx.scale = float(scale)
        ctx.x_shape = x.shape
        ctx.shared = x_lora is None
        ctx.has_bias = bias is not None
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, a2, weight, lora_a, lora_b, xa = ctx.saved_tensors
        need_x, need_x_lora, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        dy = grad_out.reshape(-1, weight.shape[0])
        g = dy.mm(lora_b)  # [tokens, r]: the gradient reaching x' A^T, before the scale
        grad_x = grad_x_lora = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            grad_x = dy.mm(weight)
            if ctx.shared:
                grad_x.addmm_(g, lora_a, alpha=ctx.scale)
            grad_x = grad_x.reshape(ctx.x_shape)
        if need_x_lora:
            grad_x_lora = g.mm(lora_a).mul_(ctx.scale).reshape(ctx.x_shape)
        if need_a:
            grad_a = g.t().mm(a2).mul_(ctx.scale)
        if need_b:
            grad_b = dy.t().mm(xa).mul_(ctx.scale)
        if need_w:
            grad_w = dy.t().mm(x2)
        if need_bias and ctx.has_bias:
            grad_bias = dy.sum(0)
        return grad_x, grad_x_lora, grad_w, grad_bias, grad_a, grad_b, None


def lora_addmm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    x_lora: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + b + scale * (x' A^T) B^T`` for ``x`` of any leading shape ``[..., in]``; one dtype throughout.

    ``x_lora`` is the adapter's input when it differs from ``x`` (dropout before the adapter).
    """
    return LoRAAddmmFunction.apply(x, x_lora, weight, bias, lora_a, lora_b, scale)
