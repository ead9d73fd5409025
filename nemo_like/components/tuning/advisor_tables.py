"""The fine-tuning guide's starting ranges as data: one row per data-set size bucket and method.

Why data, not prose: the advisor, its tests and ``tune.yaml`` all read the same numbers, so a
change to a range is made once. Ranges follow the hyperparameter guide's quick-start tables
(SFT and PEFT rows by data-set size) and its warm-up advice; the starting value inside each
range follows the guide's worked scenarios where it gives one (small LoRA: rank 4, lr 2e-5,
batch 16; medium LoRA: batch 64, 2 epochs; large SFT: lr 2e-5, batch 128).
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_MAX_ROWS = 5_000  # below: small
LARGE_MIN_ROWS = 50_000  # above: large; in between (both ends included): medium

BUCKET_LABELS = {"small": "small (< 5K rows)", "medium": "medium (5K-50K rows)", "large": "large (> 50K rows)"}


def size_bucket(rows: int) -> str:
    """``small`` below 5K rows, ``large`` above 50K, ``medium`` in between (the guide's three columns)."""
    if rows < SMALL_MAX_ROWS:
        return "small"
    if rows > LARGE_MIN_ROWS:
        return "large"
    return "medium"


@dataclass(frozen=True)
class Span:
    """A recommended range and the value to start from inside it."""

    low: float
    high: float
    start: float


# The guide's SFT (full fine-tuning) table.
SFT: dict[str, dict[str, Span]] = {
    "small": {
        "optimizer.lr": Span(1e-6, 5e-6, 2e-6),
        "optimizer.weight_decay": Span(0.01, 0.1, 0.05),
        "step_scheduler.num_epochs": Span(1, 3, 2),
        "step_scheduler.global_batch_size": Span(16, 32, 16),
        "step_scheduler.local_batch_size": Span(2, 4, 2),
        "lr_scheduler.min_lr": Span(1e-7, 1e-7, 1e-7),
    },
    "medium": {
        "optimizer.lr": Span(5e-6, 2e-5, 1e-5),
        "optimizer.weight_decay": Span(0.01, 0.01, 0.01),
        "step_scheduler.num_epochs": Span(2, 5, 3),
        "step_scheduler.global_batch_size": Span(32, 64, 64),
        "step_scheduler.local_batch_size": Span(4, 8, 4),
        "lr_scheduler.min_lr": Span(1e-6, 1e-6, 1e-6),
    },
    "large": {
        "optimizer.lr": Span(1e-5, 3e-5, 2e-5),
        "optimizer.weight_decay": Span(0.0, 0.01, 0.0),
        "step_scheduler.num_epochs": Span(1, 3, 1),
        "step_scheduler.global_batch_size": Span(64, 128, 128),
        "step_scheduler.local_batch_size": Span(8, 16, 8),
        "lr_scheduler.min_lr": Span(1e-6, 1e-6, 1e-6),
    },
}

# The guide's PEFT (LoRA) table; weight decay and local batch come from the SFT rows (the LoRA table
# has none), and alpha is 2x rank to start ("2x to 4x rank", large data: "2x rank").
LORA: dict[str, dict[str, Span]] = {
    "small": {
        "optimizer.lr": Span(1e-5, 5e-5, 2e-5),
        "peft.dim": Span(4, 8, 4),
        "peft.dropout": Span(0.05, 0.1, 0.1),
        "step_scheduler.num_epochs": Span(3, 5, 3),
        "step_scheduler.global_batch_size": Span(16, 32, 16),
    },
    "medium": {
        "optimizer.lr": Span(1e-5, 1e-4, 3e-5),
        "peft.dim": Span(8, 16, 8),
        "peft.dropout": Span(0.05, 0.05, 0.05),
        "step_scheduler.num_epochs": Span(2, 4, 2),
        "step_scheduler.global_batch_size": Span(32, 64, 64),
    },
    "large": {
        "optimizer.lr": Span(5e-5, 2e-4, 1e-4),
        "peft.dim": Span(16, 64, 16),
        "peft.dropout": Span(0.0, 0.05, 0.0),
        "step_scheduler.num_epochs": Span(1, 3, 1),
        "step_scheduler.global_batch_size": Span(64, 128, 128),
    },
}
ALPHA_FACTOR = {"small": (2, 4), "medium": (2, 4), "large": (2, 2)}

# Preference and RL methods: the guide has no table for them. Their LR starts from the LoRA (or SFT)
# row; these extra knobs use the library's defaults and common practice.
DPO_BETA = Span(0.05, 0.5, 0.1)
DPO_EPOCHS = Span(1, 2, 1)  # preference pairs are learnt fast: the margin saturates within an epoch or two
GRPO_NUM_GENERATIONS = Span(4, 16, 8)
GRPO_PROMPTS_DIVISOR = 4  # prompts per step: a quarter of the SFT batch, each prompt yields num_generations rows

CLIP_GRAD_NORM = 1.0


def warmup_span(total_steps: int) -> Span:
    """Warm-up steps by run length: short runs 5-10, medium 5-10% kept in 50-200, long 10% up to 1000."""
    total = max(int(total_steps), 1)
    if total < 50:  # a few-step trial: about a tenth of it
        few = max(1, round(0.1 * total))
        return Span(few, min(5, max(few, total // 5)), few)
    if total < 500:
        return Span(5, 10, 10 if total >= 100 else 5)
    if total <= 5000:
        low = min(max(round(0.05 * total), 50), 200)
        high = min(max(round(0.10 * total), 50), 200)
        return Span(low, high, low)
    return Span(min(round(0.05 * total), 1000), min(round(0.10 * total), 1000), min(round(0.10 * total), 1000))
