"""Context parallel: each of ``cp`` ranks holds a slice of every sequence; attention sees all of it.

Long sequences are split along the sequence dimension, so activations (and the quadratic
attention scores) per rank shrink by ``cp``. Everything but attention is token-local;
attention all-gathers keys and values from the group and masks causally by *global*
token index.

Why our own attention: torch's ``context_parallel`` (ring attention) has no CPU kernels,
and ``torch.distributed.nn.functional.all_gather`` returns wrong gradients on gloo. The
gather here has a hand-written backward: the gradient of a rank's keys is the sum, over
all ranks, of the gradient its slice received there (a reduce-scatter).

Load balance: with a causal mask the late tokens attend to more keys, so each rank takes
two of ``2 * cp`` chunks, chunk ``r`` and chunk ``2 * cp - 1 - r``; every rank then does
the same amount of attention work.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.config.errors import ConfigError

ATTN_IMPLEMENTATION = "nemo_like_context_parallel"

_STATE: dict[str, Any] = {"group": None}


def _cp_group() -> Any:
    group = _STATE["group"]
    if group is None:
        raise RuntimeError(f"attention {ATTN_IMPLEMENTATION!r} used without enable_context_parallel(model, cp_mesh)")
    return group


def local_token_index(seq_len: int, cp_size: int, cp_rank: int, device: torch.device | None = None) -> torch.Tensor:
    """Global token indices held by ``cp_rank`` (chunks ``r`` and ``2cp-1-r``); ``seq_len`` % (2 cp) == 0."""
    chunk = seq_len // (2 * cp_size)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    second = torch.arange((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk, device=device)
    return torch.cat([first, second])


class _GatherSequence(torch.autograd.Function):
    """All-gather along ``dim`` in rank order; backward reduce-scatters the gradient back to its owner."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        size = dist.get_world_size(ctx.group)
        stacked = grad.movedim(ctx.dim, 0).contiguous()  # owner's slices are contiguous along dim 0
        out = torch.empty((stacked.shape[0] // size, *stacked.shape[1:]), dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out, stacked, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.movedim(0, ctx.dim), None, None


def gather_sequence(x: torch.Tensor, dim: int, group: Any = None) -> torch.Tensor:
    """Differentiable all-gather of ``x`` along ``dim`` over the context-parallel group."""
    return _GatherSequence.apply(x, dim, group if group is not None else _cp_group())


def _gather_no_grad(x: torch.Tensor, group: Any) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def context_parallel_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: local queries against the gathered keys/values.

    ``query`` is ``[B, H, S_local, D]``, ``key``/``value`` ``[B, H_kv, S_local, D]``;
    ``attention_mask`` is the local 2-D padding mask (or None). Packed rows (``position_ids`` that restart
    at 0 inside a row, see ``shard_batch``) also keep each query to the keys of its own document: the
    documents are numbered from the gathered positions, in global token order. Returns ``[B, S_local, H, D]``.
    """
    group = _cp_group()
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    s_local = query.shape[2]
    seq_len = s_local * size
    keys = gather_sequence(key, 2, group)
    values = gather_sequence(value, 2, group)
    q_index = local_token_index(seq_len, size, rank, query.device)
    k_index = torch.cat([local_token_index(seq_len, size, r, query.device) for r in range(size)])
    allowed = (q_index[:, None] >= k_index[None, :])[None, None]  # [1, 1, S_local, S]
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.dim() == 2:
        same_document = _same_document(position_ids, q_index, k_index, group)
        if same_document is not None:
            allowed = allowed & same_document
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ConfigError("context parallel attention takes a 2-D padding mask; shard the batch with "
                              "shard_batch (packed 4-D masks become position restarts there)")
        valid = _gather_no_grad(attention_mask.to(torch.bool), group)  # [B, S] in gathered order
        allowed = allowed & valid[:, None, None, :]
        # A padding query with nothing to attend to would give NaN; let it see itself (no label reads it).
        allowed = allowed | (q_index[:, None] == k_index[None, :])[None, None]
    groups = query.shape[1] // keys.shape[1]
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        query, keys, values, attn_mask=allowed, dropout_p=dropout if module.training else 0.0, scale=scaling
    )
    return out.transpose(1, 2).contiguous(), None


_DOCUMENTS: dict[str, Any] = {"ids": None, "mask": None}  # the last position_ids seen: every layer reuses it


def _same_document(position_ids: torch.Tensor, q_index: torch.Tensor, k_index: torch.Tensor,
                   group: Any) -> torch.Tensor | None:
    """``[B, 1, S_local, S]``: whether a local query and a gathered key lie in one document (documents start
    where positions restart at 0, in global order); None when every row is one document. Computed once per
    forward (all layers, and a recompute in backward, get the same ``position_ids`` tensor)."""
    cached = _DOCUMENTS["ids"]
    if cached is not None and cached() is position_ids:
        return _DOCUMENTS["mask"]
    gathered = _gather_no_grad(position_ids, group)  # [B, S] in gathered order
    in_order = torch.empty_like(gathered)
    in_order[:, k_index] = gathered
    docs = torch.cumsum((in_order == 0).to(torch.long), dim=-1)
    mask = None
    if bool((docs[:, -1] > 1).any()):  # some row holds more than one document
        mask = (docs[:, q_index][:, :, None] == docs[:, k_index][:, None, :])[:, None]
    _DOCUMENTS["ids"], _DOCUMENTS["mask"] = weakref.ref(position_ids), mask
    return mask


def _padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                  mask_function: Any = None, attention_mask: torch.Tensor | None = None,
                  **kwargs: Any) -> torch.Tensor | None:
    """transformers' mask hook for our attention: pass the local 2-D padding mask through unchanged."""
    return attention_mask


def register_attention() -> None:
    """Make ``ATTN_IMPLEMENTATION`` a transformers attention backend (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, context_parallel_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _padding_mask)


def enable_context_parallel(model: torch.nn.Module, cp_mesh: Any) -> torch.nn.Module:
    """Switch ``model``'s attention to the context-parallel one over ``cp_mesh``."""
    register_attention()
    _STATE["group"] = cp_mesh.get_group() if hasattr(cp_mesh, "get_group") else cp_mesh
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ConfigError(f"distributed.cp_size: {type(model).__name__} is not a transformers model with "
                         "a pluggable attention; context parallel needs one")
    for module in model.modules():
        sub = getattr(module, "config", None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            sub._attn_implementation = ATTN_IMPLEMENTATION
    return model


def uses_context_parallel(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTN_IMPLEMENTATION


def shard_batch(
    batch: dict[str, torch.Tensor], cp_size: int, cp_rank: int, multiple: int = 1
) -> dict[str, torch.Tensor]:
    """This rank's slice of every ``[B, S]`` field, after padding S to a multiple of ``2 * cp_size * multiple``.

    ``position_ids`` are made explicit first (global positions), so rotary embeddings see
    where each token really is. Padding adds label -100 and mask 0: it never reaches the loss.
    ``multiple`` (the tensor-parallel size under sequence parallel) makes each rank's slice
    split evenly again; with ``cp_size`` 1 the batch is only padded.
    """
    if cp_size == 1 and multiple == 1:
        return batch
    mask = batch.get("attention_mask")
    out = dict(batch)
    if mask is not None and mask.dim() != 2:
        if "position_ids" not in batch:
            raise ConfigError("distributed.cp_size: a 4-D attention mask without position_ids cannot be split "
                              "over context-parallel ranks")
        # A packed row: its documents restart their positions at 0, which the attention reads; no padding inside.
        out["attention_mask"] = torch.ones_like(batch["input_ids"])
    ids = batch["input_ids"]
    bsz, seq_len = ids.shape
    if "position_ids" not in out:
        out["position_ids"] = torch.arange(seq_len, device=ids.device).expand(bsz, seq_len)
    pad = (-seq_len) % ((2 * cp_size if cp_size > 1 else 1) * multiple)
    fill = {"labels": IGNORE_INDEX, "attention_mask": 0, "input_ids": 0}
    for name, value in list(out.items()):
        if not torch.is_tensor(value) or value.dim() != 2 or value.shape[1] != seq_len:
            raise ConfigError(f"distributed.cp_size: batch field {name!r} of shape {tuple(value.shape)} "
                             f"is not [batch, {seq_len}]; cannot split it over context-parallel ranks")
        if pad:
            if name == "position_ids":
                extra = value[:, -1:] + torch.arange(1, pad + 1, device=value.device)
            else:
                extra = torch.full((bsz, pad), fill.get(name, 0), dtype=value.dtype, device=value.device)
            value = torch.cat([value, extra], dim=1)
        out[name] = value
    if cp_size == 1:
        return out
    index = local_token_index(seq_len + pad, cp_size, cp_rank, ids.device)
    return {name: value.index_select(1, index) for name, value in out.items()}
