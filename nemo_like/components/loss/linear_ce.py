"""Cross-entropy straight from the final hidden states, chunk by chunk, only where a label is.

Why: a causal LM's forward multiplies every position by the output layer and keeps the
``[tokens, vocab]`` logits (SmolLM2: 49,152 floats a token), and a plain cross-entropy
adds a log-softmax of the same size and its gradient. In answer-only fine-tuning only a
few positions carry a label, so most of that work and memory buys nothing. This loss
takes the hidden states that would enter the output layer, keeps the labelled positions,
and for ``chunk_size`` of them at a time computes the logits, their log-sum-exp and,
while the chunk's logits exist, the gradients. The logits of a chunk are dropped before
the next one, so the full logits never exist; backward only scales the stored gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.loss.masked_ce import nonzero_count

# Bytes of fp32 logits one chunk may hold when chunk_size is not given (a few hundred rows at vocab 49,152).
_DEFAULT_CHUNK_BYTES = 64 * 2**20


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """Summed token CE of ``hidden @ weight.T (+ bias)``; gradients are made in forward, chunk by chunk."""

    @staticmethod
    def forward(  # noqa: PLR0913 - autograd passes each input positionally
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
        softcap: float,
        fp32_upcast: bool,
        ignore_index: int,
        masked: bool,
        needs: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        need_h, need_w, need_b = needs
        rows = hidden.shape[0]
        # Summing chunks in the input dtype (bf16) would round each chunk's share: accumulate in fp32 at least.
        acc = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        for start in range(0, rows, chunk_size):
            h = hidden[start : start + chunk_size]
            t = targets[start : start + chunk_size]
            logits = F.linear(h, weight, bias)
            if fp32_upcast:
                logits = logits.to(acc)
            slope = None
            if softcap:
                logits = torch.tanh(logits / softcap)
                slope = 1 - logits * logits  # d(softcap * tanh(z / softcap)) / dz
                logits = logits * softcap
            safe_t = t.masked_fill(t == ignore_index, 0) if masked else t
            logp = torch.log_softmax(logits, dim=-1)  # one fused pass; faster on CPU than logsumexp + subtract
            del logits
            token_loss = -logp.gather(1, safe_t[:, None]).squeeze(1)
            if masked:
                token_loss = token_loss.masked_fill(t == ignore_index, 0)
            total += token_loss.sum(dtype=acc)
            if not (need_h or need_w or need_b):
                continue
            # d(sum CE) / d(logits) = softmax - one_hot(target), zero on ignored rows; built in place.
            grad = logp.exp_()
            grad.scatter_add_(1, safe_t[:, None], grad.new_full((grad.shape[0], 1), -1.0))
            if masked:
                grad.mul_((t != ignore_index)[:, None].to(grad.dtype))
            if slope is not None:
                grad.mul_(slope)
            grad = grad.to(h.dtype)
            if need_h:
                torch.mm(grad, weight, out=grad_h[start : start + chunk_size])
            if need_w:
                grad_w.addmm_(grad.t().to(acc), h.to(acc))
            if need_b:
                grad_b += grad.to(acc).sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN205 - autograd's contract
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        out = []
        for grad, dtype in ((grad_h, h_dtype), (grad_w, w_dtype), (grad_b, b_dtype)):
            out.append(None if grad is None else (grad * grad_out.to(grad.dtype)).to(dtype))
        return (*out, None, None, None, None, None, None, None)


class FusedLinearCrossEntropy:
    """Output layer + token cross-entropy in one, over the labelled positions only.

    Called with the final hidden states ``[..., hidden]``, the labels ``[...]`` (already
    shifted: ``labels[i]`` is the target at position ``i``) and the output layer's weight
    ``[vocab, hidden]``; returns the same number as
    :class:`~nemo_like.components.loss.masked_ce.MaskedCrossEntropy` on the full logits:
    the summed token loss, divided by ``num_label_tokens`` when given (``reduction="mean"``
    divides by this batch's label count instead). Under autocast the product runs in the
    autocast dtype and, with ``fp32_upcast``, the softmax in fp32, as the model's own output
    layer followed by ``MaskedCrossEntropy`` would. ``chunk_size`` positions are done at a
    time; by default as many as keep a chunk's fp32 logits under 64 MiB.
    ``logit_softcapping`` applies ``c * tanh(z / c)`` (Gemma-2 style) before the softmax.

    Selecting the labelled positions needs their count: pass labels that are still on the
    host (the collater's tensors) and no device synchronisation happens. With
    ``only_labelled=False`` every position is scored and ignored ones are masked out, for
    backends that want fixed shapes.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        logit_softcapping: float = 0.0,
        reduction: str = "sum",
        chunk_size: int | None = None,
        fp32_upcast: bool = True,
        only_labelled: bool = True,
    ) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"loss_fn.reduction: {reduction!r} is not one of 'sum', 'mean'")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
            raise ValueError(f"loss_fn.chunk_size: must be a positive integer, got {chunk_size!r}")
        if not isinstance(logit_softcapping, (int, float)) or logit_softcapping < 0:
            raise ValueError(f"loss_fn.logit_softcapping: must be >= 0 (0 = off), got {logit_softcapping!r}")
        self.ignore_index = ignore_index
        self.logit_softcapping = float(logit_softcapping)
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.fp32_upcast = fp32_upcast
        self.only_labelled = only_labelled

    def __call__(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        lm_weight: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
        lm_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the summed token loss of ``hidden_states @ lm_weight.T``, divided by ``num_label_tokens`` when given."""
        width = hidden_states.shape[-1]
        if lm_weight.dim() != 2 or lm_weight.shape[1] != width:
            raise ValueError(f"loss_fn: lm_weight of shape {tuple(lm_weight.shape)} does not take hidden states of "
                             f"width {width}")
        if labels.numel() * width != hidden_states.numel():
            raise ValueError(f"loss_fn: labels of shape {tuple(labels.shape)} do not match hidden states of shape "
                             f"{tuple(hidden_states.shape)}")
        device = hidden_states.device
        flat = hidden_states.reshape(-1, width)
        targets = labels.reshape(-1)
        if self.only_labelled:
            keep = torch.nonzero(targets != self.ignore_index).squeeze(1)  # on the labels' device
            targets = targets.index_select(0, keep).to(device)
            flat = flat.index_select(0, keep.to(device))
        else:
            targets = targets.to(device)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else flat.dtype
        flat, weight = flat.to(dtype), lm_weight.to(dtype)
        bias = None if lm_bias is None else lm_bias.to(dtype)
        grad_on = torch.is_grad_enabled()
        needs = (grad_on and flat.requires_grad, grad_on and weight.requires_grad,
                 grad_on and bias is not None and bias.requires_grad)
        chunk = self.chunk_size or max(1, _DEFAULT_CHUNK_BYTES // (4 * weight.shape[0]))
        with torch.autocast(device.type, enabled=False):
            total = _LinearCrossEntropyFunction.apply(
                flat, weight, bias, targets, chunk, self.logit_softcapping, self.fp32_upcast, self.ignore_index,
                not self.only_labelled, needs,
            )
        if num_label_tokens is not None:
            return total / nonzero_count(num_label_tokens)  # no label tokens: 0, not 0 / 0
        if self.reduction == "mean":
            count = targets.numel() if self.only_labelled else (targets != self.ignore_index).sum()
            return total / max(count, 1) if isinstance(count, int) else total / count.clamp(min=1)
        return total


# The name this loss also goes by in the design notes; NeMo AutoModel's YAMLs use FusedLinearCrossEntropy.
LinearCrossEntropy = FusedLinearCrossEntropy
