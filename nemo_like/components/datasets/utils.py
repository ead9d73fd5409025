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
    Items that are already batches (2-D tensors, as benchmark streams yield) are joined along
    the batch axis instead, padded the same way.
    """
    if not batch:
        raise ValueError("default_collater: empty batch")
    if isinstance(batch[0].get("input_ids"), torch.Tensor) and batch[0]["input_ids"].dim() == 2:
        return _join_batches(batch, pad_token_id, pad_seq_len_divisible)
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
    plain = [_without_padding_block({k: v for k, v in sample.items() if k != "attention_mask"}) for sample in batch]
    out = default_collater(plain, pad_token_id=pad_token_id, pad_seq_len_divisible=pad_seq_len_divisible)
    out["attention_mask"] = block_causal_mask(out["position_ids"])
    return out


def _without_padding_block(sample: dict[str, Any]) -> dict[str, Any]:
    """The row without its last document when no token of it carries a label (the block that fills a pack).

    Why: a pack of short documents ends in padding (a 256-token pack holds four 55-token rows and
    36 tokens of nothing), and computing it made packing slower than padding to the longest row.
    The last document of a row is seen by no other (causal, block-diagonal), and without labels it
    adds nothing to the loss, so leaving it out changes no loss and no gradient; rows of a batch
    are then padded to the longest real one, as unpacked rows are.
    """
    positions, labels = sample["position_ids"], sample["labels"]
    n = len(positions)
    start = n - 1
    while start > 0 and positions[start] != 0:
        start -= 1
    if start == 0 or any(label != IGNORE_INDEX for label in labels[start:]):
        return sample
    return {k: (v[:start] if isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n else v)
            for k, v in sample.items()}


def _join_batches(batch: list[dict[str, Any]], pad_token_id: int, pad_seq_len_divisible: int | None
                  ) -> dict[str, torch.Tensor]:
    """Items of ``[b, s]`` tensors as one ``[sum b, S]`` batch, right-padded to the longest ``s``."""
    max_len = max(int(sample["input_ids"].shape[1]) for sample in batch)
    if pad_seq_len_divisible:
        max_len = -(-max_len // pad_seq_len_divisible) * pad_seq_len_divisible
    out: dict[str, torch.Tensor] = {}
    for key, first in batch[0].items():
        if not (isinstance(first, torch.Tensor) and first.dim() == 2):
            continue
        pad = pad_token_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        parts = [torch.nn.functional.pad(sample[key], (0, max_len - sample[key].shape[1]), value=pad)
                 for sample in batch]
        out[key] = torch.cat(parts, dim=0)
    return out


def packed_sequence_thd_collater(
    batch: list[dict[str, Any]], pad_token_id: int = 0, pad_seq_len_divisible: int | None = None
) -> dict[str, torch.Tensor]:
    """The packed-sequence collater under the name packed ("THD") recipes use; unpacked rows are accepted too.

    Documents are told apart the way this library's packed path reads them: ``position_ids``
    restart at 0 at each document, and the batch carries the 4-D block-diagonal causal
    ``attention_mask`` (flash attention drops it and cuts at the restarts). So the batch has
    ``input_ids``, ``labels``, ``position_ids`` and ``attention_mask``, not the ``seq_lens`` /
    ``seq_lens_padded`` / ``qkv_format`` fields of a THD layout, which no model here reads.
    A row without ``position_ids`` (an unpacked dataset) is one document: its real tokens
    (``attention_mask`` 1) count 0, 1, 2, ... and its padding is a block of its own.
    """
    if not batch:
        raise ValueError("packed_sequence_thd_collater: empty batch")
    rows = []
    for sample in batch:
        if "position_ids" in sample:
            rows.append(sample)
            continue
        real = sum(sample["attention_mask"]) if "attention_mask" in sample else len(sample["input_ids"])
        row = {k: list(v) for k, v in sample.items() if k != "attention_mask"}
        row["position_ids"] = list(range(real)) + list(range(len(row["input_ids"]) - real))
        rows.append(row)
    return packed_sequence_collater(rows, pad_token_id=pad_token_id, pad_seq_len_divisible=pad_seq_len_divisible)
