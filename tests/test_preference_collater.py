"""The shared-prompt preference layout gives the padded and the packed layouts' log-probs and gradients."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import tiny_llama_config
from nemo_like.components.datasets.llm.packed_sequence import prepare_packed_attention
from nemo_like.components.datasets.llm.preference_collater import (
    check_shared_prompt_attention,
    packed_preference_collater,
    preference_collater,
    shared_prompt_preference_collater,
)
from nemo_like.components.loss.sequence_logps import sequence_logps

VOCAB, PAD = 128, 0


def _pairs(count: int, seed: int, prompt: tuple[int, int] = (2, 30),
           completion: tuple[int, int] = (1, 12)) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    tokens = lambda lo, hi: [rng.randrange(1, VOCAB) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    return [{"prompt_ids": tokens(*prompt), "chosen_ids": tokens(*completion), "rejected_ids": tokens(*completion)}
            for _ in range(count)]


def _model(attn: str) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(VOCAB))
    model.config._attn_implementation = attn
    return model.float()


def _logps(model: torch.nn.Module, attn: str, layout: str, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (summed completion log-probs, token counts): chosen ones first, then rejected."""
    pairs = len(items)
    if layout == "padded":
        batch = preference_collater(items, pad_token_id=PAD)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
    collate = packed_preference_collater if layout == "packed" else shared_prompt_preference_collater
    batch = collate(items, pad_token_id=PAD, pad_seq_len_divisible=16)
    inputs = prepare_packed_attention({k: batch[k] for k in ("input_ids", "position_ids", "attention_mask")}, attn)
    logits = model(**inputs).logits
    return sequence_logps(logits, batch["input_ids"], batch["completion_mask"], batch["sequence_index"],
                          num_sequences=2 * pairs, predicted_from=batch.get("predicted_from"))


def test_the_mask_positions_and_predictors_of_one_pair():
    batch = shared_prompt_preference_collater([{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9],
                                                "rejected_ids": [10, 11, 12]}], pad_token_id=PAD,
                                              pad_seq_len_divisible=10)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 0, 0]]
    assert batch["sequence_index"].tolist() == [[-1, -1, -1, 0, 0, 1, 1, 1, -1, -1]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 0, 0]]
    assert batch["predicted_from"].tolist() == [[-1, -1, -1, 2, 3, 2, 5, 6, -1, -1]]
    seen = batch["attention_mask"][0, 0].int().tolist()
    assert seen[4] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # chosen: the prompt and itself
    assert seen[7] == [1, 1, 1, 0, 0, 1, 1, 1, 0, 0]  # rejected: the prompt and itself, not the chosen
    assert seen[9] == [0] * 9 + [1]  # padding: only itself
    with pytest.raises(ValueError, match="empty prompt"):
        shared_prompt_preference_collater([{"prompt_ids": [], "chosen_ids": [1], "rejected_ids": [2]}])
    with pytest.raises(ValueError, match="dense attention mask"):
        check_shared_prompt_attention("packed_sdpa")


def test_predicted_from_the_previous_position_is_the_default_scoring():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 7, VOCAB), torch.randint(0, VOCAB, (2, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]])
    previous = torch.arange(-1, 6).expand(2, 7)
    default, counts = sequence_logps(logits, ids, mask)
    explicit, explicit_counts = sequence_logps(logits, ids, mask, predicted_from=previous)
    assert torch.allclose(default, explicit, atol=1e-5) and torch.equal(counts, explicit_counts)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_log_probs_and_gradients_equal_the_padded_and_packed(attn, one_thread):
    items = _pairs(6, seed=1)
    model = _model(attn)
    results, grads = {}, {}
    for layout in ("padded", "packed", "shared"):
        model.zero_grad()
        logps, counts = _logps(model, attn, layout, items)
        logps.sum().backward()
        results[layout] = (logps.detach(), counts)
        grads[layout] = {name: p.grad.clone() for name, p in model.named_parameters()}
    expected_counts = [len(i["chosen_ids"]) for i in items] + [len(i["rejected_ids"]) for i in items]
    for layout in ("packed", "shared"):
        assert results[layout][1].tolist() == results["padded"][1].tolist() == expected_counts
        logp_diff = (results[layout][0] - results["padded"][0]).abs().max().item()
        grad_diff = max((grads[layout][n] - grads["padded"][n]).abs().max().item() for n in grads["padded"])
        print(f"\n[{attn}] {layout} vs padded: max log-prob diff {logp_diff:.1e}, max grad diff {grad_diff:.1e}")
        assert logp_diff < 1e-5 and grad_diff < 1e-5


@pytest.mark.parametrize("prompt, completion", [((4, 12), (4, 12)), ((40, 60), (2, 6))])
def test_the_shared_prompt_computes_each_prompt_once(prompt, completion):
    """Real tokens computed (padding left out): the saving is the prompts' share of the separate layout, up to
    a half; with padding, the padded layouts' widths compare the same way."""
    items = _pairs(8, seed=2, prompt=prompt, completion=completion)
    packed = int((packed_preference_collater(items)["input_ids"].shape[1]))  # no padding: every token is real
    batch = shared_prompt_preference_collater(items)
    first_completion = batch["completion_mask"].argmax(-1)  # each row's prompt length
    shared = int(first_completion.sum() + batch["completion_mask"].sum())
    prompts = sum(len(i["prompt_ids"]) for i in items)
    assert first_completion.tolist() == [len(i["prompt_ids"]) for i in items]
    assert packed - shared == prompts
    padded = preference_collater(items)["input_ids"].numel()
    assert batch["input_ids"].numel() < padded
    print(f"\nprompts {prompt}, completions {completion}: separate {packed} tokens, shared {shared} tokens "
          f"(saving {1 - shared / packed:.0%}); with padding {padded} -> {batch['input_ids'].numel()}")
