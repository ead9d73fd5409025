"""``packed_sdpa``: attention of packed rows computed per document, with SDPA, on any device.

Why: a packed row of ``S`` tokens under SDPA and a block-causal mask pays for ``S x S``
scores although each document only looks at itself. With ~55-token documents in a
512-token pack that is ten times the attention work the documents need (about 15% of a
SmolLM2-135M training step on a CPU). Flash attention's variable-length kernels avoid it
on CUDA; this function does the same with plain SDPA: it gathers the documents of the
batch (found where ``position_ids`` restart at 0) into a ``[documents, heads, longest, dim]``
tensor, each document padded at its end, runs causal SDPA on it and scatters the result
back. Padding at the end of a document is never seen by that document's tokens under a
causal mask, so the result equals the block-causal attention.

Use it by loading the model with ``attn_implementation: packed_sdpa`` (it is registered
with transformers when this module is imported, which the packed-sequence code does).
Batches that are not packed (no restart of ``position_ids`` inside a row), generation and
padded batches go to transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

NAME = "packed_sdpa"

# The layout of the last position_ids seen: every layer of one forward (and its backward) reuses it.
_last: dict[str, Any] = {"ids": None, "layout": None}


def document_layout(position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int] | None:
    """Where each token goes in the per-document tensor, or None when no row holds more than one document.

    Returns ``(slot_of_token, token_of_slot, documents, longest)``: the flat slot
    ``document * longest + position`` of every token, and for every slot the token that
    fills it (slots past a document's end repeat its first token; causal masking hides them).
    """
    cached = _last["ids"]() if _last["ids"] is not None else None
    if cached is position_ids:
        return _last["layout"]
    layout = None
    if position_ids.dim() == 2 and position_ids.shape[1] > 1 and bool((position_ids[:, 1:] == 0).any()):
        flat = position_ids.reshape(-1)
        starts = flat == 0
        starts[0] = True  # a row always begins a document
        row_starts = torch.zeros_like(position_ids, dtype=torch.bool)
        row_starts[:, 0] = True
        starts = starts | row_starts.reshape(-1)
        document = torch.cumsum(starts.to(torch.long), 0) - 1
        documents = int(document[-1]) + 1
        offset = torch.arange(flat.numel(), device=flat.device) - torch.nonzero(starts).reshape(-1)[document]
        longest = int(offset.max()) + 1
        slot_of_token = document * longest + offset
        first_token = torch.nonzero(starts).reshape(-1)
        token_of_slot = first_token.repeat_interleave(longest)  # a document's first token fills its empty slots
        token_of_slot[slot_of_token] = torch.arange(flat.numel(), device=flat.device)
        layout = (slot_of_token, token_of_slot, documents, longest)
    _last["ids"], _last["layout"] = weakref.ref(position_ids), layout
    return layout


def packed_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query`` ``[B, H, S, D]``, ``key``/``value`` ``[B, KV, S, D]`` -> ``[B, S, H, D]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    same_length = query.shape[2] == key.shape[2]
    layout = document_layout(position_ids) if position_ids is not None and same_length else None
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    slot_of_token, token_of_slot, documents, longest = layout
    batch, heads, seq, dim = query.shape

    def by_document(x: torch.Tensor) -> torch.Tensor:  # [B, h, S, D] -> [documents, h, longest, D]
        tokens = x.transpose(1, 2).reshape(batch * seq, x.shape[1], dim)
        return tokens[token_of_slot].reshape(documents, longest, x.shape[1], dim).transpose(1, 2)

    q, k, v = by_document(query), by_document(key), by_document(value)
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, **gqa)
    out = out.transpose(1, 2).reshape(documents * longest, heads, dim)[slot_of_token]
    return out.reshape(batch, seq, heads, dim), None


def register() -> None:
    """Make ``attn_implementation="packed_sdpa"`` known to transformers (attention and mask interfaces)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention_forward)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, sdpa_mask)


register()
