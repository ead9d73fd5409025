"""Learning-rate schedule: linear warmup, then one of several decay shapes, per optimizer step."""

from __future__ import annotations

import math
from typing import Any

import torch

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")


class OptimizerParamScheduler:
    """Sets ``lr`` on every param group from the step count.

    Warmup goes linearly from ``init_lr`` to ``max_lr`` over ``lr_warmup_steps``; then
    the rate decays to ``min_lr`` at ``lr_decay_steps`` in the chosen style and stays there.
    WSD holds ``max_lr`` until the last ``wsd_decay_steps`` and decays only then.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        init_lr: float,
        max_lr: float,
        min_lr: float,
        lr_warmup_steps: int,
        lr_decay_steps: int,
        lr_decay_style: str = "cosine",
        wsd_decay_steps: int | None = None,
        lr_wsd_decay_style: str = "exponential",
    ) -> None:
        if lr_decay_style not in DECAY_STYLES:
            raise ValueError(f"lr_scheduler.lr_decay_style: {lr_decay_style!r} is not one of {DECAY_STYLES}")
        if lr_wsd_decay_style not in WSD_STYLES:
            raise ValueError(f"lr_scheduler.lr_wsd_decay_style: {lr_wsd_decay_style!r} is not one of {WSD_STYLES}")
        if not 0.0 <= min_lr <= max_lr:
            raise ValueError(f"lr_scheduler.min_lr: {min_lr} must lie in [0, max_lr={max_lr}]")
        self.optimizer = optimizer
        self.init_lr = init_lr
        self.max_lr = max_lr
        self.min_lr = min_lr
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_decay_steps = max(lr_decay_steps, 1)
        self.lr_decay_style = lr_decay_style
        self.wsd_decay_steps = wsd_decay_steps
        self.lr_wsd_decay_style = lr_wsd_decay_style
        self.num_steps = 0
        self.step(0)

    def get_lr(self) -> float:
        n = self.num_steps
        if self.lr_warmup_steps > 0 and n <= self.lr_warmup_steps:
            return self.init_lr + (self.max_lr - self.init_lr) * n / self.lr_warmup_steps
        if self.lr_decay_style == "constant":
            return self.max_lr
        if n > self.lr_decay_steps:
            return self.min_lr
        if self.lr_decay_style == "inverse-square-root":
            warmup = max(self.lr_warmup_steps, 1)
            return max(self.min_lr, self.max_lr * math.sqrt(warmup) / math.sqrt(max(n, 1)))
        span = self.max_lr - self.min_lr
        if self.lr_decay_style == "WSD":
            decay = self.wsd_decay_steps if self.wsd_decay_steps is not None else (self.lr_decay_steps - self.lr_warmup_steps) // 10
            start = self.lr_decay_steps - decay
            if n <= start or decay <= 0:
                return self.max_lr
            ratio = (n - start) / decay
            if self.lr_wsd_decay_style == "linear":
                coeff = 1.0 - ratio
            elif self.lr_wsd_decay_style == "cosine":
                coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
            elif self.lr_wsd_decay_style == "exponential":
                coeff = (2.0 * math.pow(0.5, ratio)) - 1.0
            else:
                coeff = 1.0 - math.sqrt(ratio)
            return self.min_lr + coeff * span
        ratio = (n - self.lr_warmup_steps) / max(self.lr_decay_steps - self.lr_warmup_steps, 1)
        if self.lr_decay_style == "linear":
            coeff = 1.0 - ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * span

    def step(self, increment: int = 1) -> None:
        self.num_steps += increment
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "max_lr": self.max_lr, "min_lr": self.min_lr, "init_lr": self.init_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        self.step(0)


# Accepted for YAML compatibility; weight decay stays the optimizer's own constant value.
_WEIGHT_DECAY_FIELDS = {"start_weight_decay", "end_weight_decay", "weight_decay_incr_style", "start_wd", "end_wd", "wd_incr_steps", "wd_incr_style"}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    lr_decay_style: str = "cosine",
    lr_warmup_steps: int | None = None,
    lr_decay_steps: int | None = None,
    min_lr: float | None = None,
    init_lr: float | None = None,
    wsd_decay_steps: int | None = None,
    lr_wsd_decay_style: str = "exponential",
    **unused: Any,
) -> OptimizerParamScheduler:
    """Fill the defaults a user expects: warmup 10% of steps (at most 1000), min_lr 1% and init_lr 10% of the base lr."""
    unknown = set(unused) - _WEIGHT_DECAY_FIELDS
    if unknown:
        raise ValueError(f"lr_scheduler: unknown field(s) {sorted(unknown)}")
    base_lr = optimizer.param_groups[0]["lr"]
    if lr_warmup_steps is None:
        lr_warmup_steps = min(1000, total_steps // 10)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.1 * base_lr if init_lr is None else init_lr,
        max_lr=base_lr,
        min_lr=0.01 * base_lr if min_lr is None else min_lr,
        lr_warmup_steps=lr_warmup_steps,
        lr_decay_steps=total_steps if lr_decay_steps is None else lr_decay_steps,
        lr_decay_style=lr_decay_style,
        wsd_decay_steps=wsd_decay_steps,
        lr_wsd_decay_style=lr_wsd_decay_style,
    )
