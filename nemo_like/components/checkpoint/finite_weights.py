"""Refuse to save weights that hold NaN or inf: a checkpoint must never replace good state with bad.

Each tensor's smallest and largest value (``torch.aminmax``: NaN propagates to both, an inf
shows in one, and nothing can overflow) and one host sync per device; with several ranks each
checks its own shards and the ranks agree on the first bad tensor, so all refuse together. The
bounds read each tensor once on all threads: 37 ms for SmolLM2-135M here, where the fused
``_foreach_norm(ord=inf)`` took 191 ms of a 1.9 s save.
"""

from __future__ import annotations

import torch
from torch import nn

from nemo_like.components.checkpoint import dcp
from nemo_like.components.checkpoint.errors import CheckpointError


class NonFiniteWeightsError(CheckpointError):
    """A save refused because a weight (or adapter tensor) is NaN or inf; nothing was written."""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _bounds(t: torch.Tensor) -> torch.Tensor:
    """``[min, max]`` of ``t`` as floats: both finite exactly when every element is."""
    try:
        return torch.stack(torch.aminmax(t)).float()
    except (RuntimeError, NotImplementedError, TypeError):  # a dtype aminmax lacks
        norm = torch.linalg.vector_norm(t.float(), float("inf"))
        return torch.stack([norm, norm])


def first_non_finite(model: nn.Module, trainable_only: bool = False) -> str | None:
    """Name of the first parameter (trainable ones only, for adapters) holding NaN/inf, or None.

    Collective when several ranks run: every rank must call it.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    checked = [(i, _local(p.detach())) for i, (_, p) in enumerate(named)]
    checked = [(i, t) for i, t in checked if t.is_floating_point() and t.numel() > 0 and not t.is_meta]
    first = len(named)
    if checked:
        bounds = [_bounds(t) for _, t in checked]
        by_device: dict[torch.device, list[int]] = {}
        for k, b in enumerate(bounds):
            by_device.setdefault(b.device, []).append(k)
        for positions in by_device.values():
            bad = ~torch.isfinite(torch.stack([bounds[k] for k in positions])).all(dim=1).cpu()
            if bad.any():
                first = min(first, checked[positions[int(bad.nonzero()[0])]][0])
    first = dcp.all_ranks_min(first)
    return named[first][0] if first < len(named) else None


def refuse_non_finite(model: nn.Module, step: int, trainable_only: bool, latest: str | None) -> None:
    """Raise a one-line ``NonFiniteWeightsError`` naming the step and the first bad tensor; collective."""
    name = first_non_finite(model, trainable_only)
    if name is None:
        return
    kind = "trainable tensor" if trainable_only else "parameter"
    raise NonFiniteWeightsError(
        f"checkpoint of step {step} refused: {kind} {name} holds NaN or inf, so nothing was written and LATEST "
        f"still names {latest or 'no checkpoint'} (lower optimizer.lr or set clip_grad_norm.max_norm)"
    )
