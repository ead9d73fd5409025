"""Summed log-probabilities of each sequence's completion tokens, from a forward's logits.

Preference losses compare whole completions: ``log p(completion | prompt)`` is the sum, over the
completion's tokens, of the log-probability the model gave each one at the position before it.
Rows may hold one sequence each (padded batches) or several (packed batches, where
``sequence_index`` names each token's sequence and -1 marks padding). A token is normally
predicted by the position just before it; layouts where it is not (the shared-prompt batch, whose
rejected completion follows the chosen one but continues the prompt) say where with ``predicted_from``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, S-1]``: the log-probability of token ``t+1`` at position ``t`` (fp32)."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def token_logps_from(logits: torch.Tensor, input_ids: torch.Tensor, predicted_from: torch.Tensor) -> torch.Tensor:
    """``[B, S]``: the log-probability of token ``t`` at position ``predicted_from[t]`` (fp32; 0 where it is -1).

    Only the picked logits and one log-sum-exp per position are read, not a second copy of the logits.
    """
    batch, seq, vocab = logits.shape
    source = predicted_from.clamp(min=0)
    rows = source + seq * torch.arange(batch, device=logits.device)[:, None]
    picked = logits.reshape(batch * seq, vocab)[rows, input_ids].float()
    logps = picked - torch.logsumexp(logits.float(), dim=-1).gather(1, source)
    return logps.masked_fill(predicted_from < 0, 0.0)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                   sequence_index: torch.Tensor | None = None, num_sequences: int | None = None,
                   predicted_from: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs, completion token counts) per sequence.

    Without ``sequence_index`` each row is one sequence; with it (``[B, S]``, -1 for padding)
    the ``num_sequences`` sequences are gathered from wherever their tokens sit. Without
    ``predicted_from`` each token is scored at the position before it; with it (``[B, S]``) at the
    position it names.
    """
    if predicted_from is None:  # token t+1 from position t: drop the first column of the masks
        per_token = token_logps(logits, input_ids)
        completion_mask = completion_mask[:, 1:]
        sequence_index = None if sequence_index is None else sequence_index[:, 1:]
    else:
        per_token = token_logps_from(logits, input_ids, predicted_from)
    per_token = per_token * completion_mask
    counts_per_token = completion_mask.to(per_token.dtype)
    if sequence_index is None:
        return per_token.sum(-1), counts_per_token.sum(-1)
    if num_sequences is None:
        raise ValueError("sequence_logps: give num_sequences with sequence_index")
    index = sequence_index.reshape(-1)
    keep = index >= 0
    sums = per_token.new_zeros(num_sequences).index_add(0, index[keep], per_token.reshape(-1)[keep])
    counts = per_token.new_zeros(num_sequences).index_add(0, index[keep], counts_per_token.reshape(-1)[keep])
    return sums, counts


class CompletionPositions(NamedTuple):
    """Where a batch's completion tokens are scored: the flat position (``b * S + t``) whose output predicts
    each token, the token, and its sequence (``[N]`` each, in the batch's order)."""

    rows: torch.Tensor
    targets: torch.Tensor
    sequence: torch.Tensor


def completion_positions(input_ids: torch.Tensor, completion_mask: torch.Tensor,
                         sequence_index: torch.Tensor | None = None,
                         predicted_from: torch.Tensor | None = None) -> CompletionPositions:
    """The completion tokens of any layout (padded, packed, shared-prompt), for scoring only where needed."""
    batch, tokens = completion_mask.nonzero(as_tuple=True)
    source = predicted_from[batch, tokens] if predicted_from is not None else tokens - 1
    sequence = sequence_index[batch, tokens] if sequence_index is not None else batch
    return CompletionPositions(batch * input_ids.shape[1] + source, input_ids[batch, tokens], sequence)
