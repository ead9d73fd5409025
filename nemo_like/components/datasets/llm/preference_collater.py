"""Batches of preference pairs: padded (``preference_collater``), packed (``packed_preference_collater``)
or packed with one prompt per pair (``shared_prompt_preference_collater``).

Padded: each pair's prompt + chosen rows first, then its prompt + rejected rows, the layout TRL's
DPO trainer uses (one forward over ``2B`` rows; the first half chosen). Packed: all ``2B``
sequences one after another in a single row, each restarting its positions and seeing only
itself (the block-causal mask packed SFT uses), so no padding is computed. Shared prompt: one
row again, but each pair is ``[prompt, chosen, rejected]`` with the prompt computed once; the
rejected tokens see the prompt and themselves, not the chosen ones, and their positions continue
from the prompt's end, so every completion is computed as if it followed the prompt alone. Either
way ``completion_mask`` marks the completion tokens whose log-probabilities the loss sums; the
packed batches' ``sequence_index`` says which sequence each token belongs to (chosen ones first).
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


# Attention backends that apply the collater's dense mask as given. ``packed_sdpa`` and flash attention
# find documents from where ``position_ids`` restart, so they would let the rejected tokens see the chosen.
SHARED_PROMPT_ATTENTION = ("sdpa", "eager", "flex_attention")


def check_shared_prompt_attention(attn_implementation: str) -> None:
    """Refuse a backend that would ignore the shared-prompt mask (the log-probs would be silently wrong)."""
    if attn_implementation not in SHARED_PROMPT_ATTENTION:
        raise ValueError(f"the shared-prompt preference layout needs a dense attention mask: attn_implementation "
                         f"{attn_implementation!r} is not one of {list(SHARED_PROMPT_ATTENTION)}")


def shared_prompt_preference_collater(batch: list[dict[str, Any]], pad_token_id: int = 0,
                                      pad_seq_len_divisible: int | None = None) -> dict[str, torch.Tensor]:
    """One row ``[1, T]``: per pair ``[prompt, chosen, rejected]``, the prompt computed once for both.

    Besides the packed collater's keys (``attention_mask`` is a boolean ``[1, 1, T, T]`` mask for
    :func:`~nemo_like.components.datasets.llm.packed_sequence.prepare_packed_attention`), the batch has
    ``predicted_from``: for each completion token, the position whose logits predict it (-1 elsewhere).
    It is the previous position except for a rejected completion's first token, which the prompt's last
    token predicts; pass it to :func:`~nemo_like.components.loss.sequence_logps.sequence_logps`.
    Only backends in ``SHARED_PROMPT_ATTENTION`` apply the mask (see ``check_shared_prompt_attention``).
    """
    if not batch:
        raise ValueError("shared_prompt_preference_collater: empty batch")
    ids: list[int] = []
    positions: list[int] = []
    pair: list[int] = []  # which pair's block each token is in (a padding token is a block of its own)
    part: list[int] = []  # 0 prompt, 1 chosen, 2 rejected
    owner: list[int] = []
    source: list[int] = []
    num_pairs = len(batch)
    for i, item in enumerate(batch):
        prompt, chosen, rejected = item["prompt_ids"], item["chosen_ids"], item["rejected_ids"]
        n, m1, m2 = len(prompt), len(chosen), len(rejected)
        if not n:
            raise ValueError(f"shared_prompt_preference_collater: pair {i} has an empty prompt; its completions' "
                             "first tokens would have nothing to be predicted from")
        start = len(ids)
        last_prompt = start + n - 1
        ids += list(prompt) + list(chosen) + list(rejected)
        positions += list(range(n + m1)) + list(range(n, n + m2))
        pair += [i] * (n + m1 + m2)
        part += [0] * n + [1] * m1 + [2] * m2
        owner += [-1] * n + [i] * m1 + [num_pairs + i] * m2
        source += [-1] * n + list(range(last_prompt, last_prompt + m1))
        source += [last_prompt] + list(range(start + n + m1, start + n + m1 + m2 - 1))
    pad = (-len(ids)) % pad_seq_len_divisible if pad_seq_len_divisible else 0
    ids += [pad_token_id] * pad
    positions += [0] * pad
    pair += range(num_pairs, num_pairs + pad)
    part += [0] * pad
    owner += [-1] * pad
    source += [-1] * pad
    block, kind = torch.tensor(pair), torch.tensor(part)
    index = torch.arange(len(ids))
    causal = index[:, None] >= index[None, :]
    rejected_sees_chosen = (kind[:, None] == 2) & (kind[None, :] == 1)
    mask = (block[:, None] == block[None, :]) & causal & ~rejected_sees_chosen
    owners = torch.tensor([owner], dtype=torch.long)
    return {"input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "attention_mask": mask[None, None], "completion_mask": (owners >= 0).to(torch.long),
            "sequence_index": owners, "predicted_from": torch.tensor([source], dtype=torch.long)}
