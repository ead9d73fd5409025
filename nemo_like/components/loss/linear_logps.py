"""Log-probabilities of given tokens straight from the final hidden states, chunk by chunk.

Why: preference losses need ``log p(token)`` at the completion positions only, yet a causal LM's
forward computes ``[tokens, vocab]`` logits everywhere (SmolLM2: 49,152 floats a token), and a
log-softmax keeps a second tensor of that size for the backward. Here the output layer is applied
to the selected positions only, ``chunk_size`` rows at a time, keeping one log-sum-exp per row;
the backward recomputes each chunk's logits (one more output-layer matmul over the selected rows)
instead of keeping them. Unlike a cross-entropy summed into one number, the loss built on these
values is any function of them, so gradients cannot be made in the forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_DEFAULT_CHUNK_BYTES = 64 * 2**20  # fp32 logits one chunk may hold when chunk_size is not given


class _LinearLogProbs(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[row, target]`` per row, in fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: PLR0913
                targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk_size):
            logits = F.linear(hidden[start: start + chunk_size], weight, bias).float()
            lse[start: start + chunk_size] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, targets[start: start + chunk_size, None]).squeeze(-1)
            out[start: start + chunk_size] = picked - lse[start: start + chunk_size]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN205 - autograd's contract
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b and bias is not None \
            else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            h = hidden[rows]
            logits = F.linear(h, weight, bias).float()
            # d logp[target] / d logits = onehot(target) - softmax(logits), scaled by each row's incoming gradient
            grad_logits = torch.exp(logits - lse[rows, None]).mul_(-grad_out[rows, None])
            grad_logits.scatter_add_(-1, targets[rows, None], grad_out[rows, None].float())
            if grad_h is not None:
                grad_h[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += grad_logits.T @ h.float()
            if grad_b is not None:
                grad_b += grad_logits.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None)


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       bias: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """``[rows]`` fp32 log-probabilities of ``targets`` under the output layer ``weight`` (``[vocab, hidden]``)
    applied to ``hidden`` (``[rows, hidden]``); equal to ``log_softmax(F.linear(hidden, weight, bias))`` picked
    at the targets, with gradients for ``hidden``, ``weight`` and ``bias``."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
    size = chunk_size or max(1, _DEFAULT_CHUNK_BYTES // (4 * weight.shape[0]))
    return _LinearLogProbs.apply(hidden, weight, bias, targets, size)


@contextlib.contextmanager
def output_layer_scores(head: torch.nn.Linear, rows: torch.Tensor, targets: torch.Tensor,
                        scale: float = 1.0) -> Iterator[None]:
    """For one forward, the model's output layer returns ``linear_token_logps`` of ``targets`` at the flat
    positions ``rows`` of its input instead of logits, and the model hands them back as ``logits``.

    ``scale`` multiplies the scores before the softmax (``1 / temperature`` for a sampling distribution).
    The scores are computed inside the model's own forward, where the layer's weight is the one the
    forward uses (gathered by FSDP2, or a tensor-parallel shard gathered here differentiably).
    """

    def score(hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = head.weight, head.bias
        if hasattr(weight, "full_tensor"):
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        hidden = hidden.reshape(-1, hidden.shape[-1])[rows]
        if scale != 1.0:  # (h W + b) * s = (h s) W + b s, on the few rows scored
            hidden, bias = hidden * scale, (bias * scale if bias is not None else None)
        return linear_token_logps(hidden, weight, targets, bias)

    head.forward = score
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
