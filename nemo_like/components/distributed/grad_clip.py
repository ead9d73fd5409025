"""Gradient-norm clipping for any mix of plain, FSDP, TP and FSDP+TP parameters.

``torch.nn.utils.clip_grad_norm_`` stacks the per-parameter norms into one tensor, which
fails once the parameters live on different device meshes (FSDP-only norms next to
FSDP x TP linears). Here each group of gradients that share a mesh and a placement is
reduced on its own: the local shards' ``sum |g|^p`` is summed over exactly the mesh
dimensions the group is split along (replicated dimensions already hold the whole
value), and the groups are then added up as plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist


def _is_split(placement: object) -> bool:
    """Shard and FSDP's strided shard (which is not a Shard subclass) both split; Replicate does not."""
    return not placement.is_replicate() and not _is_partial(placement)


def _is_partial(placement: object) -> bool:
    is_partial = getattr(placement, "is_partial", None)
    return bool(is_partial()) if callable(is_partial) else False


@torch.no_grad()
def total_grad_norm(parameters: Iterable[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all gradients together, as one replicated plain scalar (float32) on every rank."""
    norm_type = float(norm_type)
    grads = [p.grad for p in parameters if p.grad is not None]
    groups: dict[tuple | None, list[torch.Tensor]] = {}
    for g in grads:
        if hasattr(g, "device_mesh"):
            key = (g.device_mesh, tuple(g.placements))
        else:
            key = None
        groups.setdefault(key, []).append(g)
    device = grads[0].device if grads else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float32, device=device)
    for key, members in groups.items():
        locals_ = [g.to_local() if hasattr(g, "to_local") else g for g in members]
        norms = torch.stack([torch.linalg.vector_norm(t.float(), norm_type) for t in locals_]).to(device)
        if math.isinf(norm_type):
            part = norms.max() if norms.numel() else torch.zeros((), device=device)
        else:
            part = (norms**norm_type).sum()
        if key is not None:
            mesh, placements = key
            for dim, placement in enumerate(placements):
                if _is_partial(placement):
                    raise ValueError("clip_grad_norm: a gradient is still a partial sum; reduce it before clipping")
                if _is_split(placement):
                    op = dist.ReduceOp.MAX if math.isinf(norm_type) else dist.ReduceOp.SUM
                    dist.all_reduce(part, op=op, group=mesh.get_group(dim))
        total = torch.maximum(total, part) if math.isinf(norm_type) else total + part
    return total if math.isinf(norm_type) else total ** (1.0 / norm_type)


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float | None, norm_type: float = 2.0) -> torch.Tensor:
    """Scale gradients in place so their total norm is at most ``max_norm``; returns the norm before clipping.

    ``max_norm`` None (or inf) only measures. Non-finite norms are returned as they are and
    the gradients left alone, as torch does without ``error_if_nonfinite``.
    """
    params = [p for p in parameters if p.grad is not None]
    if not any(hasattr(p.grad, "device_mesh") for p in params):  # nothing sharded: torch's own does it
        limit = math.inf if max_norm is None else float(max_norm)
        return torch.nn.utils.clip_grad_norm_(params, limit, norm_type=norm_type)
    total = total_grad_norm(params, norm_type)
    if max_norm is None or math.isinf(float(max_norm)) or not torch.isfinite(total):
        return total
    coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    for p in params:
        g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
        g.mul_(coef.to(device=g.device, dtype=g.dtype))
    return total
