"""Batches of preference pairs: padded (``preference_collater``) or packed (``packed_preference_collater``).

Padded: each pair's prompt + chosen rows first, then its prompt + rejected rows, the layout TRL's
DPO trainer uses (one forward over ``2B`` rows; the first half chosen). Packed: all ``2B``
sequences one after another in a single row, each restarting its positions and seeing only
itself (the block-causal mask packed SFT uses), so no padding is computed. Either way
``completion_mask`` marks the completion tokens whose log-probabilities the loss sums; the
packed batch's ``sequence_index`` says which sequence each token belongs to (chosen ones first).
"""

from __future__ import annotations

from typing import Any

import torch

from nemo_like.components.datasets.llm.packed_sequence import block_causal_mask


def preference_collater(batch: list[dict[str, Any]], pad_token_id: int = 0,
                        pad_seq_len_divisible: int | None = None) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` / ``completion_mask`` of shape ``[2B, L]``, right-padded."""
    if not batch:
        raise ValueError("preference_collater: empty batch")
    missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(batch[0])
    if missing:
        raise ValueError(f"preference_collater: items need {sorted(missing)} (build them with PreferenceDataset)")
    rows = [(b["prompt_ids"], b[key]) for key in ("chosen_ids", "rejected_ids") for b in batch]
    width = max(len(p) + len(c) for p, c in rows)
    if pad_seq_len_divisible:
        width = -(-width // pad_seq_len_divisible) * pad_seq_len_divisible
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n, m = len(prompt), len(answer)
        ids[i, : n + m] = torch.tensor(list(prompt) + list(answer), dtype=torch.long)
        attention[i, : n + m] = 1
        completion[i, n : n + m] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def packed_preference_collater(batch: list[dict[str, Any]], pad_token_id: int = 0,
                               pad_seq_len_divisible: int | None = None) -> dict[str, torch.Tensor]:
    """One row ``[1, T]``: every pair's prompt + chosen, then every pair's prompt + rejected, back to back."""
    if not batch:
        raise ValueError("packed_preference_collater: empty batch")
    ids: list[int] = []
    positions: list[int] = []
    completion: list[int] = []
    owner: list[int] = []
    sequences = [(b["prompt_ids"], b[key]) for key in ("chosen_ids", "rejected_ids") for b in batch]
    for s, (prompt, answer) in enumerate(sequences):
        n, m = len(prompt), len(answer)
        ids += list(prompt) + list(answer)
        positions += range(n + m)
        completion += [0] * n + [1] * m
        owner += [s] * (n + m)
    pad = (-len(ids)) % pad_seq_len_divisible if pad_seq_len_divisible else 0
    ids += [pad_token_id] * pad
    positions += [0] * pad  # each padding token a block of its own
    completion += [0] * pad
    owner += [-1] * pad
    position_ids = torch.tensor([positions], dtype=torch.long)
    return {"input_ids": torch.tensor([ids], dtype=torch.long), "position_ids": position_ids,
            "attention_mask": block_causal_mask(position_ids),
            "completion_mask": torch.tensor([completion], dtype=torch.long),
            "sequence_index": torch.tensor([owner], dtype=torch.long)}
