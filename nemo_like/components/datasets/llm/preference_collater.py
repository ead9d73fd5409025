"""Batches of preference pairs, padded: each pair's prompt + chosen rows first, then its prompt + rejected rows.

The layout TRL's DPO trainer uses (one forward over ``2B`` rows; the first half chosen), so a
recipe splits the per-row log-probabilities in two halves. ``completion_mask`` marks the
completion tokens whose log-probabilities the loss sums; ``attention_mask`` the real tokens.
"""

from __future__ import annotations

from typing import Any

import torch


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
