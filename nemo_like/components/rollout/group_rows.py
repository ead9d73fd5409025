"""A rollout's groups as model input rows for scoring the completions: padded, or one row per group.

Why: the update scores every completion under the policy (and the reference), and each group's
completions share their prompt. ``padded`` makes one ``[prompt, completion]`` row per completion:
the prompt is computed G times. ``shared_prompt`` makes one ``[prompt, c_1, ..., c_G]`` row per
group: each completion attends to the prompt and to itself (a boolean ``[B, 1, L, L]`` mask), its
positions continue from the prompt's end, and its first token is predicted from the prompt's last
position (``predicted_from``), so the prompt is computed once; with short completions that is most
of the tokens. Both give the same log-probs (to float rounding).

Either way the scored tokens come with their place in the ``[sequences, completion tokens]`` grid
the loss works on (``grid_sequence``, ``grid_token``, in the order ``completion_mask.nonzero()``
lists them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LAYOUTS = ("padded", "shared_prompt")


def group_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], scored: Sequence[bool],
               layout: str, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows for ``prompts[i]`` and its completions ``completions[i*G:(i+1)*G]`` (G = len(completions) / len(prompts)).

    ``scored[j]``: whether completion j's tokens are scored (a truncated completion may not be). Keys:
    ``input_ids``, ``attention_mask`` (2-D for padded, 4-D boolean for shared_prompt), ``position_ids``
    and ``predicted_from`` (shared_prompt), ``completion_mask`` (the scored tokens), ``grid_sequence``,
    ``grid_token`` and ``grid_shape`` (sequences, longest completion).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} is not one of {list(LAYOUTS)}")
    if not prompts or len(completions) % len(prompts):
        raise ValueError(f"{len(completions)} completions do not split into groups for {len(prompts)} prompts")
    group = len(completions) // len(prompts)
    longest = max((len(c) for c in completions), default=0)
    rows = _padded(prompts, completions, group, pad_token_id) if layout == "padded" else _shared(
        prompts, completions, group, pad_token_id)
    keep = torch.tensor([bool(s) for s in scored])
    owner = rows.pop("owner")
    rows["completion_mask"] &= keep[owner.clamp(min=0)] & (owner >= 0)
    batch, tokens = rows["completion_mask"].nonzero(as_tuple=True)
    rows["grid_sequence"] = owner[batch, tokens]
    rows["grid_token"] = rows.pop("offset")[batch, tokens]
    rows["completion_mask"] = rows["completion_mask"].long()
    rows["grid_shape"] = torch.tensor([len(completions), longest])
    return rows


def _padded(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], group: int,
            pad: int) -> dict[str, torch.Tensor]:
    width = max(len(prompts[j // group]) + len(c) for j, c in enumerate(completions))
    shape = (len(completions), width)
    ids, attention = torch.full(shape, pad, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    mask, owner, offset = torch.zeros(shape, dtype=torch.bool), torch.full(shape, -1), torch.zeros(shape, dtype=torch.long)
    for j, completion in enumerate(completions):
        prompt = prompts[j // group]
        n, m = len(prompt), len(completion)
        ids[j, : n + m] = torch.tensor(list(prompt) + list(completion), dtype=torch.long)
        attention[j, : n + m] = 1
        mask[j, n: n + m], owner[j, n: n + m], offset[j, n: n + m] = True, j, torch.arange(m)
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": mask, "owner": owner, "offset": offset}


def _shared(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], group: int,
            pad: int) -> dict[str, torch.Tensor]:
    width = max(len(p) + sum(len(c) for c in completions[i * group:(i + 1) * group]) for i, p in enumerate(prompts))
    shape = (len(prompts), width)
    ids, positions = torch.full(shape, pad, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    part = torch.full(shape, -2, dtype=torch.long)  # -1 prompt, k completion k of the group, -2 padding
    owner, offset = torch.full(shape, -1), torch.zeros(shape, dtype=torch.long)
    source = torch.full(shape, -1, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        n = len(prompt)
        if not n:
            raise ValueError(f"prompt {i} is empty: its completions' first tokens would have nothing to follow")
        ids[i, :n], positions[i, :n], part[i, :n] = torch.tensor(list(prompt), dtype=torch.long), torch.arange(n), -1
        at = n
        for k in range(group):
            completion = completions[i * group + k]
            m = len(completion)
            if not m:
                continue
            span = slice(at, at + m)
            ids[i, span] = torch.tensor(list(completion), dtype=torch.long)
            positions[i, span], part[i, span] = torch.arange(n, n + m), k
            owner[i, span], offset[i, span] = i * group + k, torch.arange(m)
            source[i, span] = torch.arange(at - 1, at + m - 1)
            source[i, at] = n - 1  # a completion's first token follows the prompt, not the completion before it
            at += m
    index = torch.arange(width)
    causal = index[:, None] >= index[None, :]
    query, key = part[:, :, None], part[:, None, :]
    mask = causal & ((key == -1) | (key == query)) & (query != -2)
    mask |= (query == -2) & torch.eye(width, dtype=torch.bool)  # a padding token sees itself only
    return {"input_ids": ids, "position_ids": positions, "attention_mask": mask[:, None],
            "completion_mask": owner >= 0, "owner": owner, "offset": offset, "predicted_from": source}
