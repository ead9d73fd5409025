"""Refuse to save weights that hold NaN or inf: a checkpoint must never replace good state with bad.

One fused ``torch._foreach_norm(ord=inf)`` over the tensors (a max of absolute values, so it
cannot overflow, and NaN propagates) and one host sync per device; with several ranks each
checks its own shards and the ranks agree on the first bad tensor, so all refuse together.
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


def _max_abs(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per tensor max |x| (NaN if any NaN): fused where torch can, one by one for tensor types it cannot fuse."""
    try:
        return list(torch._foreach_norm(tensors, float("inf")))
    except (RuntimeError, NotImplementedError, TypeError):
        return [torch.linalg.vector_norm(t.float(), float("inf")) for t in tensors]


def first_non_finite(model: nn.Module, trainable_only: bool = False) -> str | None:
    """Name of the first parameter (trainable ones only, for adapters) holding NaN/inf, or None.

    Collective when several ranks run: every rank must call it.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    checked = [(i, _local(p.detach())) for i, (_, p) in enumerate(named)]
    checked = [(i, t) for i, t in checked if t.is_floating_point() and t.numel() > 0 and not t.is_meta]
    first = len(named)
    if checked:
        norms = _max_abs([t for _, t in checked])
        by_device: dict[torch.device, list[int]] = {}
        for k, norm in enumerate(norms):
            by_device.setdefault(norm.device, []).append(k)
        for positions in by_device.values():
            bad = ~torch.isfinite(torch.stack([norms[k].float() for k in positions])).cpu()
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
