"""Summed log-probabilities of each sequence's completion tokens, from a forward's logits.

Preference losses compare whole completions: ``log p(completion | prompt)`` is the sum, over the
completion's tokens, of the log-probability the model gave each one at the position before it.
Rows may hold one sequence each (padded batches) or several (packed batches, where
``sequence_index`` names each token's sequence and -1 marks padding).
"""

from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, S-1]``: the log-probability of token ``t+1`` at position ``t`` (fp32)."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                   sequence_index: torch.Tensor | None = None,
                   num_sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs, completion token counts) per sequence.

    Without ``sequence_index`` each row is one sequence; with it (``[B, S]``, -1 for padding)
    the ``num_sequences`` sequences are gathered from wherever their tokens sit.
    """
    per_token = token_logps(logits, input_ids) * completion_mask[:, 1:]
    counts_per_token = completion_mask[:, 1:].to(per_token.dtype)
    if sequence_index is None:
        return per_token.sum(-1), counts_per_token.sum(-1)
    if num_sequences is None:
        raise ValueError("sequence_logps: give num_sequences with sequence_index")
    index = sequence_index[:, 1:].reshape(-1)
    keep = index >= 0
    sums = per_token.new_zeros(num_sequences).index_add(0, index[keep], per_token.reshape(-1)[keep])
    counts = per_token.new_zeros(num_sequences).index_add(0, index[keep], counts_per_token.reshape(-1)[keep])
    return sums, counts
