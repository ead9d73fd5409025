"""Cross-entropy over pre-shifted labels, normalised by a caller-given token count.

Why a caller-given count: with gradient accumulation and data parallelism the loss
of one optimizer step must be the sum of token losses over every micro-batch and
rank divided by the total number of label tokens of that step. A per-micro-batch
mean would weight short batches more than long ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nemo_like.components.batch import IGNORE_INDEX


class MaskedCrossEntropy:
    """Token cross-entropy; labels equal to ``ignore_index`` carry no loss.

    Labels are already shifted by the dataset (``labels[i]`` is the target of
    ``logits[i]``), so nothing is shifted here.
    """

    def __init__(self, fp32_upcast: bool = True, ignore_index: int = IGNORE_INDEX, reduction: str = "sum") -> None:
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"loss_fn.reduction: {reduction!r} is not one of 'sum', 'mean', 'none'")
        self.fp32_upcast = fp32_upcast
        self.ignore_index = ignore_index
        self.reduction = reduction

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        num_label_tokens: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the summed token loss, divided by ``num_label_tokens`` when given.

        A batch (or a whole step) without label tokens gives 0, not NaN, still attached to the graph.
        """
        if mask is not None:
            labels = labels.masked_fill(mask == 0, self.ignore_index)
        if self.fp32_upcast:
            logits = logits.float()
        logits = logits.reshape(-1, logits.size(-1))
        labels = labels.reshape(-1).to(logits.device)
        reduction = "none" if self.reduction == "none" else "sum"
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction=reduction)
        if self.reduction == "none":
            return loss
        if num_label_tokens is not None:
            return loss / nonzero_count(num_label_tokens)
        if self.reduction == "mean":
            return loss / (labels != self.ignore_index).sum().clamp(min=1)
        return loss


def nonzero_count(count: int | torch.Tensor) -> int | torch.Tensor:
    """A label count to divide by: a step without label tokens has a summed loss of 0, and 0 / 0 would be NaN.

    Dividing by 1 instead keeps that step's loss 0 and in the graph (backward gives zero gradients).
    """
    if isinstance(count, torch.Tensor):
        return count.clamp(min=1)
    return max(count, 1)
