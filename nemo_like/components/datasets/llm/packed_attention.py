"""``packed_sdpa``: attention of packed rows computed per document, with SDPA, on any device.

Why: a packed row of ``S`` tokens under SDPA and a block-causal mask pays for ``S x S``
scores although each document only looks at itself. With ~55-token documents in a
512-token pack that is ten times the attention work the documents need. Flash attention's
variable-length kernels avoid it on CUDA; this function does the same with plain causal
SDPA. The documents of the batch (found where ``position_ids`` restart at 0) are split into
groups: a long document is attended alone on a slice of the row (no copy, no padding), and
documents of similar length are gathered into one ``[documents, heads, longest, dim]``
tensor, each padded at its end, so that many short ones cost one call. Padding at the end
of a document is never seen by that document's tokens under a causal mask, so the result
equals the block-causal attention.

Which documents share a call is decided once per forward by :func:`plan_groups`, from a cost
model of one call (a fixed cost, the scores, and the tokens, padded ones included, with a
gather cost for shared calls). A single ``[documents, longest]`` tensor for the whole pack
padded every document to the longest: on the quickstart's long-tail packs (one 339-token
document beside three of ~57) that was 2.7x the tokens and 3x the attention time of
per-document calls; the grouping keeps the one-call speed where documents are many and short.

Use it by loading the model with ``attn_implementation: packed_sdpa`` (it is registered
with transformers when this module is imported, which the packed-sequence code does).
Batches that are not packed (no restart of ``position_ids`` inside a row), generation and
padded batches go to transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

NAME = "packed_sdpa"

# Cost of one fused attention call (forward + backward, SmolLM2's 9 heads of 64, 2 CPU cores), in
# nanoseconds: fixed, per score of the causal square, per token (padded ones too), per gathered token.
# Only their ratios matter: they decide which documents share a call.
CALL_NS, SCORE_NS, TOKEN_NS, GATHER_NS = 170_000.0, 42.0, 3_000.0, 600.0


@dataclass(frozen=True)
class Group:
    """Documents attended in one SDPA call.

    Alone (``slots is None``): the tokens ``start:start + length`` of row ``row``. Shared:
    ``slots`` gives, for each ``[documents, length]`` slot, the flat token that fills it
    (a document's first token fills its padding).
    """

    row: int
    start: int
    length: int
    slots: torch.Tensor | None = None
    documents: int = 1


@dataclass(frozen=True)
class Layout:
    """The groups of one batch, in token order, and each token's slot among their outputs laid end to end
    (None when that is the token's own place: every group a document alone)."""

    groups: tuple[Group, ...]
    slot_of_token: torch.Tensor | None


# The layout of the last position_ids seen: every layer of one forward reuses it.
_last: dict[str, Any] = {"ids": None, "layout": None}


def plan_groups(lengths: list[int]) -> list[list[int]]:
    """Indices of ``lengths`` split into groups that each share one call: the cheapest split under the cost model.

    Documents are sorted longest first and cut into runs (a run pads to its first length); the
    cut is the exact minimum of the model over all such cuts (dynamic programming, O(n^2) in numpy).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    longest = np.array([lengths[i] for i in order], dtype=np.float64)
    per_doc = SCORE_NS * longest**2 + (TOKEN_NS + GATHER_NS) * longest  # a document padded to a run's first length
    alone = CALL_NS + SCORE_NS * longest**2 + TOKEN_NS * longest
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        first = np.arange(end)
        cost = best[:end] + CALL_NS + (end - first) * per_doc[:end]
        cost[end - 1] = best[end - 1] + alone[end - 1]
        cut[end] = int(np.argmin(cost))
        best[end] = cost[cut[end]]
    groups, end = [], n
    while end > 0:
        groups.append(order[cut[end]:end])
        end = int(cut[end])
    return groups[::-1]


def document_layout(position_ids: torch.Tensor) -> Layout | None:
    """The groups of the batch's documents, or None when no row holds more than one document."""
    cached = _last["ids"]() if _last["ids"] is not None else None
    if cached is position_ids:
        return _last["layout"]
    layout = None
    if position_ids.dim() == 2 and position_ids.shape[1] > 1 and bool((position_ids[:, 1:] == 0).any()):
        layout = _layout(position_ids)
    _last["ids"], _last["layout"] = weakref.ref(position_ids), layout
    return layout


def _layout(position_ids: torch.Tensor) -> Layout:
    rows, seq = position_ids.shape
    starts = position_ids == 0
    starts[:, 0] = True  # a row always begins a document
    flat_start = torch.nonzero(starts.reshape(-1)).reshape(-1).tolist()  # every row's start is one of them
    length = [b - a for a, b in zip(flat_start, flat_start[1:] + [rows * seq])]
    device = position_ids.device
    groups: list[Group] = []
    slot_of_token = [0] * (rows * seq)
    at = 0  # where the next group's output starts among all outputs
    for members in sorted((sorted(g) for g in plan_groups(length)), key=lambda g: g[0]):  # in token order
        first = [flat_start[i] for i in members]
        longest = max(length[i] for i in members)
        for k, (f, i) in enumerate(zip(first, members)):
            slot_of_token[f:f + length[i]] = range(at + k * longest, at + k * longest + length[i])
        if len(members) == 1:
            groups.append(Group(first[0] // seq, first[0] % seq, longest))
        else:
            slots = [f + j if j < length[i] else f for f, i in zip(first, members) for j in range(longest)]
            groups.append(Group(-1, 0, longest, torch.tensor(slots, device=device), len(members)))
        at += len(members) * longest
    alone = all(g.slots is None for g in groups)  # then the outputs laid end to end are the tokens in order
    return Layout(tuple(groups), None if alone else torch.tensor(slot_of_token, device=device))


def _attend(group: Group, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, flat: dict[str, Any],
            dropout: float, scaling: float | None) -> torch.Tensor:
    """One group's attention output, ``[documents * length, heads, dim]``: each document's slots in turn."""
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    if group.slots is None:
        q, k, v = (x[group.row, :, group.start:group.start + group.length].unsqueeze(0) for x in (query, key, value))
    else:
        def gathered(name: str, x: torch.Tensor) -> torch.Tensor:  # [B, h, S, D] -> [documents, h, length, D]
            if name not in flat:
                flat[name] = x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[3])  # [h, B*S, D]: a view when B == 1
            tokens = flat[name].index_select(1, group.slots)
            return tokens.view(x.shape[1], group.documents, group.length, x.shape[3]).transpose(0, 1)

        q, k, v = gathered("q", query), gathered("k", key), gathered("v", value)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, **gqa)
    return out.transpose(1, 2).reshape(-1, out.shape[1], out.shape[3])


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
    batch, heads, seq, dim = query.shape
    window = kwargs.get("sliding_window")
    if window and max(g.length for g in layout.groups) > window:
        raise ValueError(f"attn_implementation packed_sdpa: a packed document is longer than the model's sliding "
                         f"window ({window} tokens), which per-document causal attention does not apply; use "
                         f"sdpa or eager (the block mask) or packs of at most {window} tokens")
    flat: dict[str, Any] = {}
    outs = [_attend(g, query, key, value, flat, dropout, scaling) for g in layout.groups]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)  # [slots, H, D]
    if layout.slot_of_token is not None:
        out = out.index_select(0, layout.slot_of_token)
    return out.view(batch, seq, heads, dim), None  # contiguous: the caller's reshape to [B, S, H * D] is free


def register() -> None:
    """Make ``attn_implementation="packed_sdpa"`` known to transformers (attention and mask interfaces)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention_forward)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, sdpa_mask)


register()
