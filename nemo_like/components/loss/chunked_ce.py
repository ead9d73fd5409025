"""Cross-entropy computed a few hundred token rows at a time, for large vocabularies.

Why: ``MaskedCrossEntropy`` upcasts the whole ``[tokens, vocab]`` logits to fp32 and keeps the
fp32 softmax for backward; with a 150k vocabulary and long rows that copy is larger than the
model's activations. Here only ``chunk_len`` rows are in fp32 at any time: the forward sums the
token losses chunk by chunk, backward keeps only the logits in their own dtype and recomputes
each chunk's softmax. The value and the gradients are those of ``MaskedCrossEntropy``; the call
contract is the same (pre-shifted labels, the sum divided by ``num_label_tokens`` when given).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.loss.masked_ce import nonzero_count

__all__ = ["ChunkedCrossEntropy"]


class _ChunkedSum(torch.autograd.Function):
    """Summed token cross-entropy over ``[tokens, vocab]`` logits, ``chunk_len`` rows in fp32 at a time."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, chunk_len: int) -> torch.Tensor:
        keep = labels != ignore_index
        targets = labels.masked_fill(~keep, 0)  # any valid class; those rows are zeroed below
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.size(0), chunk_len):
            rows = slice(start, start + chunk_len)
            chunk = logits[rows].float()
            token_loss = torch.logsumexp(chunk, dim=-1) - chunk.gather(1, targets[rows, None]).squeeze(1)
            total += token_loss.masked_fill(~keep[rows], 0.0).sum()
        ctx.save_for_backward(logits, targets, keep)
        ctx.chunk_len = chunk_len
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, targets, keep = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.size(0), ctx.chunk_len):
            rows = slice(start, start + ctx.chunk_len)
            chunk_grad = torch.softmax(logits[rows].float(), dim=-1)  # d(logsumexp)/d(logits)
            chunk_grad.scatter_add_(1, targets[rows, None], chunk_grad.new_full((chunk_grad.size(0), 1), -1.0))
            chunk_grad *= keep[rows, None] * grad_total
            grad[rows] = chunk_grad.to(grad.dtype)
        return grad, None, None, None


class ChunkedCrossEntropy:
    """Token cross-entropy in chunks of ``chunk_len`` rows; labels equal to ``ignore_index`` carry no loss.

    ``compile`` is accepted for NeMo AutoModel YAMLs and has no effect: the chunked kernel is plain
    PyTorch and needs no ``torch.compile`` to stay within its memory. ``reduction``: ``sum`` (the
    recipes' contract, divided by ``num_label_tokens`` when given), ``mean`` (over this call's label
    tokens unless ``num_label_tokens`` is given) or ``none`` (one fp32 loss per token, 0 where ignored).
    """

    def __init__(self, chunk_len: int = 32, compile: bool = True, ignore_index: int = IGNORE_INDEX,
                 reduction: str = "sum") -> None:
        if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
            raise ValueError(f"loss_fn.chunk_len: must be a positive integer, got {chunk_len!r}")
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"loss_fn.reduction: {reduction!r} is not one of 'sum', 'mean', 'none'")
        self.chunk_len = chunk_len
        self.compile = bool(compile)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        num_label_tokens: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The summed token loss (fp32), divided by ``num_label_tokens`` when given; 0 without label tokens."""
        labels = labels.to(logits.device)
        if mask is not None:
            labels = labels.masked_fill(mask.to(labels.device) == 0, self.ignore_index)
        logits = logits.reshape(-1, logits.size(-1))
        labels = labels.reshape(-1)
        if self.reduction == "none":
            return torch.cat([
                F.cross_entropy(logits[i:i + self.chunk_len].float(), labels[i:i + self.chunk_len],
                                ignore_index=self.ignore_index, reduction="none")
                for i in range(0, logits.size(0), self.chunk_len)
            ]) if logits.size(0) else logits.new_zeros(0, dtype=torch.float32)
        loss = _ChunkedSum.apply(logits, labels, self.ignore_index, self.chunk_len)
        if num_label_tokens is not None:
            return loss / nonzero_count(num_label_tokens)
        if self.reduction == "mean":
            return loss / (labels != self.ignore_index).sum().clamp(min=1)
        return loss
