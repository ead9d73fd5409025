"""Batches of preference pairs: padded (``preference_collater``), packed (``packed_preference_collater``)
or packed with one prompt per pair (``shared_prompt_preference_collater``).

Padded: each pair's prompt + chosen rows first, then its prompt + rejected rows, the layout TRL's
DPO trainer uses (one forward over ``2B`` rows; the first half chosen). Packed: all ``2B``
sequences one after another in a single row, each restarting its positions and seeing only
itself (the block-causal mask packed SFT uses), so no padding is computed. Shared prompt: one
row per pair, ``[prompt, chosen, rejected]``, with the prompt computed once; the
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
    """One row per pair, ``[prompt, chosen, rejected]`` right-padded to ``[B, L]``: the prompt computed once for both.

    Besides the packed collater's keys (``attention_mask`` is a boolean ``[B, 1, L, L]`` mask for
    :func:`~nemo_like.components.datasets.llm.packed_sequence.prepare_packed_attention`), the batch has
    ``predicted_from``: for each completion token, the position in its row whose logits predict it (-1
    elsewhere). It is the previous position except for a rejected completion's first token, which the
    prompt's last token predicts; pass it to :func:`~nemo_like.components.loss.sequence_logps.sequence_logps`.
    One row per pair keeps the attention work that of the pair (a single packed row would attend across
    all pairs under the mask). Only backends in ``SHARED_PROMPT_ATTENTION`` apply the mask (see
    ``check_shared_prompt_attention``).
    """
    if not batch:
        raise ValueError("shared_prompt_preference_collater: empty batch")
    width = max(len(b["prompt_ids"]) + len(b["chosen_ids"]) + len(b["rejected_ids"]) for b in batch)
    if pad_seq_len_divisible:
        width = -(-width // pad_seq_len_divisible) * pad_seq_len_divisible
    rows = len(batch)
    ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    kind = torch.full((rows, width), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 padding
    owner = torch.full((rows, width), -1, dtype=torch.long)
    source = torch.full((rows, width), -1, dtype=torch.long)
    for i, item in enumerate(batch):
        prompt, chosen, rejected = item["prompt_ids"], item["chosen_ids"], item["rejected_ids"]
        n, m1, m2 = len(prompt), len(chosen), len(rejected)
        if not n:
            raise ValueError(f"shared_prompt_preference_collater: pair {i} has an empty prompt; its completions' "
                             "first tokens would have nothing to be predicted from")
        end = n + m1 + m2
        ids[i, :end] = torch.tensor(list(prompt) + list(chosen) + list(rejected), dtype=torch.long)
        positions[i, :end] = torch.tensor(list(range(n + m1)) + list(range(n, n + m2)))
        kind[i, :end] = torch.tensor([0] * n + [1] * m1 + [2] * m2)
        owner[i, n: n + m1], owner[i, n + m1: end] = i, rows + i
        source[i, n: end] = torch.arange(n - 1, end - 1)
        source[i, n + m1] = n - 1  # the first rejected token follows the prompt, not the chosen completion
    index = torch.arange(width)
    causal = index[:, None] >= index[None, :]
    query, key = kind[:, :, None], kind[:, None, :]
    mask = causal & ~((query == 2) & (key == 1)) & (key != 3) & (query != 3)
    mask |= (query == 3) & torch.eye(width, dtype=torch.bool)  # a padding token sees itself only
    return {"input_ids": ids, "position_ids": positions, "attention_mask": mask[:, None],
            "completion_mask": (owner >= 0).to(torch.long), "sequence_index": owner, "predicted_from": source}


def pairs_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """The pairs a collated batch holds, in any of the layouts above (its chosen sequences come first)."""
    if "pair_index" in batch:
        return int(batch["pair_index"].numel())
    index = batch.get("sequence_index")
    return int(index.max()) // 2 + 1 if index is not None else int(batch["input_ids"].shape[0]) // 2


def chosen_token_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The completion tokens of the batch's chosen sequences (an SFT term's denominator), counted on the host."""
    mask, index = batch["completion_mask"], batch.get("sequence_index")
    if index is None:
        return mask[: pairs_in_batch(batch)].sum()
    return (mask * ((index >= 0) & (index < pairs_in_batch(batch)))).sum()
