"""Batch assembly shared by every dataset."""

from __future__ import annotations

from typing import Any

import torch

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.llm.packed_sequence import block_causal_mask

# Padding value per key: labels are ignored by the loss, masks mark padding with 0.
_PAD_VALUES = {"labels": IGNORE_INDEX, "attention_mask": 0, "loss_mask": 0, "position_ids": 0}


def default_collater(
    batch: list[dict[str, Any]], pad_token_id: int = 0, pad_seq_len_divisible: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad every list field to the longest sample in the batch and stack into tensors.

    ``input_ids`` take ``pad_token_id``, ``labels`` -100, ``attention_mask`` 0. With
    ``pad_seq_len_divisible`` the length is rounded up (helps kernels that like multiples of 8).
    """
    if not batch:
        raise ValueError("default_collater: empty batch")
    keys = [k for k, v in batch[0].items() if isinstance(v, (list, tuple, torch.Tensor))]
    max_len = max(len(sample["input_ids"]) for sample in batch)
    if pad_seq_len_divisible:
        max_len = -(-max_len // pad_seq_len_divisible) * pad_seq_len_divisible
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        pad = pad_token_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        rows = []
        for sample in batch:
            values = list(sample[key])
            rows.append(values + [pad] * (max_len - len(values)))
        out[key] = torch.tensor(rows, dtype=torch.long)
    return out


def packed_sequence_collater(
    batch: list[dict[str, Any]], pad_token_id: int = 0, pad_seq_len_divisible: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack packed rows and add the 4-D block-diagonal causal ``attention_mask`` ``[B, 1, S, S]``.

    A packed row holds several documents whose ``position_ids`` restart at 0; restarting
    positions alone does not stop attention across documents, the mask does. Rows of
    unequal length are padded first (each padding token becomes a block of its own).
    """
    if any("position_ids" not in sample for sample in batch):
        raise ValueError("packed_sequence_collater: rows need position_ids (build them with PackedSequence)")
    plain = [{k: v for k, v in sample.items() if k != "attention_mask"} for sample in batch]
    out = default_collater(plain, pad_token_id=pad_token_id, pad_seq_len_divisible=pad_seq_len_divisible)
    out["attention_mask"] = block_causal_mask(out["position_ids"])
    return out
