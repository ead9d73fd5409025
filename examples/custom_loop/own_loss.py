"""The custom SFT loop with a loss of your own: label smoothing, normalised as the library normalises.

    python examples/custom_loop/own_loss.py --model HuggingFaceTB/SmolLM2-135M-Instruct --out checkpoints/smoothed

Any callable ``loss(logits, labels, num_label_tokens=n)`` works: it gets the pre-shifted labels
(``-100`` where there is no loss) and must return the SUM of its per-token losses divided by
``num_label_tokens`` (the step's label count over all micro-batches), so that gradient accumulation
gives the same update as one big batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_loop import main  # noqa: E402  (the loop itself: data, LoRA, steps, checkpoints)


class LabelSmoothedCE:
    """Cross-entropy against (1 - eps) on the label and eps spread over the vocabulary, on labelled positions only."""

    def __init__(self, epsilon: float = 0.1, ignore_index: int = -100) -> None:
        self.epsilon, self.ignore_index = epsilon, ignore_index

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, num_label_tokens: torch.Tensor) -> torch.Tensor:
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1).to(logits.device)
        keep = labels != self.ignore_index
        summed = F.cross_entropy(logits[keep], labels[keep], label_smoothing=self.epsilon, reduction="sum")
        return summed / num_label_tokens


if __name__ == "__main__":
    main(loss_fn=LabelSmoothedCE(0.1))
