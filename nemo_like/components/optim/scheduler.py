"""Learning-rate schedule: linear warmup, then one of several decay shapes, per optimizer step; optionally
a weight-decay schedule that rises from ``start_wd`` to ``end_wd``."""

from __future__ import annotations

import math
from typing import Any

import torch

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")
WD_STYLES = ("constant", "linear", "cosine")


class OptimizerParamScheduler:
    """Sets ``lr`` on every param group from the step count.

    Warmup goes linearly from ``init_lr`` to ``max_lr`` over ``lr_warmup_steps``; then
    the rate decays to ``min_lr`` at ``lr_decay_steps`` in the chosen style and stays there.
    WSD holds ``max_lr`` until the last ``wsd_decay_steps`` and decays only then.

    With ``start_wd``/``end_wd`` the weight decay of every group goes from ``start_wd`` to
    ``end_wd`` over ``wd_incr_steps`` (``linear``, or ``cosine``: slow at first, fast at the end)
    and stays there; ``constant`` keeps it at ``end_wd``. A group's ``wd_mult`` scales it
    (0 leaves biases and norms undecayed). Without them the optimizer's own value stands.
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
        start_wd: float | None = None,
        end_wd: float | None = None,
        wd_incr_steps: int | None = None,
        wd_incr_style: str = "constant",
    ) -> None:
        if (start_wd is None) != (end_wd is None):
            raise ValueError("lr_scheduler.start_wd: give both start_wd and end_wd (or neither)")
        if start_wd is not None:
            if wd_incr_style not in WD_STYLES:
                raise ValueError(f"lr_scheduler.wd_incr_style: {wd_incr_style!r} is not one of {WD_STYLES}")
            if not 0.0 <= start_wd <= end_wd:
                raise ValueError(f"lr_scheduler.end_wd: need 0 <= start_wd <= end_wd, got {start_wd} and {end_wd}")
            if wd_incr_style == "constant" and start_wd != end_wd:
                raise ValueError(f"lr_scheduler.wd_incr_style: constant keeps one weight decay, but start_wd "
                                 f"{start_wd} != end_wd {end_wd}; use wd_incr_style: linear or cosine")
            if wd_incr_steps is None or wd_incr_steps < 1:
                raise ValueError(f"lr_scheduler.wd_incr_steps: must be a positive integer, got {wd_incr_steps!r}")
        self.start_wd, self.end_wd = start_wd, end_wd
        self.wd_incr_steps, self.wd_incr_style = wd_incr_steps, wd_incr_style
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

    def get_wd(self) -> float | None:
        """The weight decay at this step, or None when no weight-decay schedule was asked for."""
        if self.start_wd is None:
            return None
        if self.num_steps > self.wd_incr_steps or self.wd_incr_style == "constant":
            return self.end_wd
        ratio = self.num_steps / self.wd_incr_steps
        coeff = ratio if self.wd_incr_style == "linear" else 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
        return self.start_wd + coeff * (self.end_wd - self.start_wd)

    def step(self, increment: int = 1) -> None:
        self.num_steps += increment
        lr, wd = self.get_lr(), self.get_wd()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if wd is not None:
                group["weight_decay"] = wd * group.get("wd_mult", 1.0)

    def state_dict(self) -> dict[str, Any]:
        state = {"num_steps": self.num_steps, "max_lr": self.max_lr, "min_lr": self.min_lr, "init_lr": self.init_lr}
        if self.start_wd is not None:
            state.update(start_wd=self.start_wd, end_wd=self.end_wd)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        self.step(0)


# Other spellings of the weight-decay schedule's fields.
_WD_ALIASES = {"start_weight_decay": "start_wd", "end_weight_decay": "end_wd", "weight_decay_incr_style": "wd_incr_style"}


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
    start_wd: float | None = None,
    end_wd: float | None = None,
    wd_incr_steps: int | None = None,
    wd_incr_style: str | None = None,
    **aliases: Any,
) -> OptimizerParamScheduler:
    """Fill the defaults a user expects: warmup 10% of steps (at most 1000), min_lr 1% and init_lr 10% of the
    base lr; a weight-decay schedule when any of its fields is given, the optimizer's weight decay standing in
    for the end not given, over all ``total_steps`` unless ``wd_incr_steps`` says otherwise."""
    wd = {"start_wd": start_wd, "end_wd": end_wd, "wd_incr_style": wd_incr_style}
    for alias, value in aliases.items():
        if alias not in _WD_ALIASES:
            raise ValueError(f"lr_scheduler: unknown field {alias!r}")
        name = _WD_ALIASES[alias]
        if wd[name] is not None and wd[name] != value:
            raise ValueError(f"lr_scheduler.{alias}: {value!r} contradicts {name} {wd[name]!r}")
        wd[name] = value
    scheduled = any(v is not None for v in wd.values()) or wd_incr_steps is not None
    base_wd = optimizer.param_groups[0].get("weight_decay", 0.0)
    if scheduled:
        wd["start_wd"] = base_wd if wd["start_wd"] is None else wd["start_wd"]
        wd["end_wd"] = base_wd if wd["end_wd"] is None else wd["end_wd"]
        wd["wd_incr_style"] = wd["wd_incr_style"] or "constant"
        wd["wd_incr_steps"] = total_steps if wd_incr_steps is None else wd_incr_steps
    else:
        wd = {}
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
        **wd,
    )
