"""A rollout's groups as rows: one per completion, or one per group with the prompt shared; same log-probs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from nemo_like.components.loss.sequence_logps import completion_positions
from nemo_like.components.rollout.group_rows import group_rows

PROMPTS = [[5, 6, 7], [8, 9]]
COMPLETIONS = [[10, 11], [12], [13, 14, 15], [16, 17], [18], [19, 20, 21, 22]]  # G = 3


def grid(rows: dict, flat: torch.Tensor) -> torch.Tensor:
    shape = tuple(int(n) for n in rows["grid_shape"])
    return torch.zeros(shape).index_put((rows["grid_sequence"], rows["grid_token"]), flat)


def logps(model, rows: dict) -> torch.Tensor:
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids") if k in rows}
    logits = model(**inputs).logits.float()
    where = completion_positions(rows["input_ids"], rows["completion_mask"], None, rows.get("predicted_from"))
    flat = logits.flatten(0, 1)[where.rows].log_softmax(-1).gather(1, where.targets[:, None]).squeeze(1)
    return grid(rows, flat)


def test_grid_places_every_completion_token(one_thread):
    for layout in ("padded", "shared_prompt"):
        rows = group_rows(PROMPTS, COMPLETIONS, [True] * 6, layout, pad_token_id=0)
        ids = grid(rows, rows["input_ids"][rows["completion_mask"].bool()].float())
        for j, completion in enumerate(COMPLETIONS):
            assert ids[j, : len(completion)].long().tolist() == completion, layout
    shared = group_rows(PROMPTS, COMPLETIONS, [True] * 6, "shared_prompt", pad_token_id=0)
    assert shared["input_ids"].shape == (2, 3 + 6) and shared["attention_mask"].shape == (2, 1, 9, 9)
    assert shared["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 3, 4, 5]  # each completion follows the prompt
    assert shared["predicted_from"][0].tolist() == [-1, -1, -1, 2, 3, 2, 2, 6, 7]


def test_unscored_completions_leave_the_mask_and_the_grid():
    rows = group_rows(PROMPTS, COMPLETIONS, [True, False, True, True, True, False], "shared_prompt", 0)
    assert set(rows["grid_sequence"].tolist()) == {0, 2, 3, 4}
    assert int(rows["completion_mask"].sum()) == 2 + 3 + 2 + 1


def test_both_layouts_give_the_log_probs_of_each_sequence_alone(tiny_tokenizer, one_thread):
    model = tiny_llama(len(tiny_tokenizer), seed=0).eval()
    alone = torch.zeros(6, 4)
    for j, completion in enumerate(COMPLETIONS):
        ids = torch.tensor([PROMPTS[j // 3] + completion])
        scores = model(ids).logits[0, len(PROMPTS[j // 3]) - 1: -1].log_softmax(-1)
        alone[j, : len(completion)] = scores.gather(1, torch.tensor(completion)[:, None]).squeeze(1)
    with torch.no_grad():
        for layout in ("padded", "shared_prompt"):
            got = logps(model, group_rows(PROMPTS, COMPLETIONS, [True] * 6, layout, pad_token_id=0))
            assert torch.allclose(got, alone, atol=1e-5), layout


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="layout"):
        group_rows(PROMPTS, COMPLETIONS, [True] * 6, "packed", 0)
    with pytest.raises(ValueError, match="do not split into groups"):
        group_rows(PROMPTS, COMPLETIONS[:5], [True] * 5, "padded", 0)
