"""The rollout generator samples what ``model.generate`` samples, token for token under one seed,
while encoding each prompt once for its whole group; its log-probs are those of a plain forward pass."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from nemo_like.components.rollout import Generator, HFGenerator, Rollout, SamplingParams, top_k_filter, top_p_filter

PROMPTS = ["What is 3 plus 4?", "What is 12 plus 9? The", "7 plus"]


@pytest.fixture(scope="module")
def model(tiny_tokenizer, one_thread):
    return tiny_llama(len(tiny_tokenizer), seed=0).eval()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[list[int]]:
    ids = [tiny_tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in ids}) == len(ids)  # different lengths, so the batch is left-padded
    return ids


@pytest.fixture(scope="module")
def frequent_tokens(model, prompts, tiny_tokenizer) -> list[int]:
    """Tokens the tiny model samples most often from these prompts: as EOS ids they end some rows early."""
    torch.manual_seed(1)
    seen = reference_generate(model, prompts, 8, SamplingParams(max_completion_length=24),
                              eos=[tiny_tokenizer.eos_token_id], pad=tiny_tokenizer.pad_token_id)
    counts = torch.bincount(torch.tensor([t for row in seen for t in row]))
    return counts.topk(4).indices.tolist()


def reference_generate(model, prompts: list[list[int]], group: int, sp: SamplingParams, eos: list[int],
                       pad: int) -> list[list[int]]:
    """``model.generate`` on the left-padded batch with every setting explicit; rows cut after their first EOS."""
    if not sp.do_sample:  # greedy generate refuses num_return_sequences > 1: repeat the prompts instead
        prompts, group = [p for p in prompts for _ in range(group)], 1
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    if sp.do_sample:  # top_k=0 / top_p=1.0 switch those warpers off (None would fall back to the model's defaults)
        how = dict(do_sample=True, temperature=sp.temperature, top_k=sp.top_k or 0, top_p=sp.top_p)
    else:
        how = dict(do_sample=False)
    out = model.generate(ids, attention_mask=mask, num_return_sequences=group, max_new_tokens=sp.max_completion_length,
                         eos_token_id=eos, pad_token_id=pad, **how)
    rows = []
    for row in out[:, width:].tolist():
        ends = [j for j, t in enumerate(row) if t in eos]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def rollout(model, prompts, group: int, sp: SamplingParams, eos: list[int], pad: int, seed: int) -> Rollout:
    torch.manual_seed(seed)
    return HFGenerator(model, eos, pad).generate(prompts, group, sp)


CASES = {
    "one_prompt": (slice(0, 1), 4, SamplingParams(max_completion_length=16)),
    "left_padded_prompts": (slice(None), 3, SamplingParams(max_completion_length=16)),
    "temperature_top_k_top_p": (slice(None), 3, SamplingParams(temperature=0.7, top_k=20, top_p=0.9,
                                                                max_completion_length=16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_tokens_equal_generate(model, prompts, tiny_tokenizer, case):
    which, group, sp = CASES[case]
    eos, pad = [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id
    torch.manual_seed(7)
    expected = reference_generate(model, prompts[which], group, sp, eos, pad)
    after_generate = torch.rand(4)
    got = rollout(model, prompts[which], group, sp, eos, pad, seed=7)
    assert got.completion_ids == expected
    assert torch.equal(torch.rand(4), after_generate)  # the global RNG was consumed exactly as generate consumes it
    assert len(got.completion_ids) == len(prompts[which]) * group


def test_rows_that_stop_early_still_match_generate(model, prompts, frequent_tokens):
    sp = SamplingParams(temperature=0.9, top_k=100, max_completion_length=24)
    torch.manual_seed(3)
    expected = reference_generate(model, prompts, 4, sp, frequent_tokens, pad=0)
    after_generate = torch.rand(4)
    got = rollout(model, prompts, 4, sp, frequent_tokens, pad=0, seed=3)
    assert got.completion_ids == expected
    assert torch.equal(torch.rand(4), after_generate)
    lengths = [len(c) for c in got.completion_ids]
    assert min(lengths) < 12 and any(got.truncated) and not all(got.truncated)  # some stopped early, some ran out


def test_shared_prompt_cache_gives_single_sequence_logprobs(model, prompts, frequent_tokens):
    sp = SamplingParams(temperature=0.7, top_k=30, top_p=0.95, max_completion_length=20)
    got = rollout(model, prompts, 3, sp, frequent_tokens, pad=0, seed=11)
    assert [len(lp) for lp in got.logprobs] == [len(c) for c in got.completion_ids]
    for row, (completion, logprobs) in enumerate(zip(got.completion_ids, got.logprobs)):
        prompt = prompts[row // 3]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0].float()
        # the logits that predict completion token t sit one position earlier
        scores = (logits[len(prompt) - 1: -1] / sp.temperature).log_softmax(-1)
        want = scores.gather(1, torch.tensor(completion)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(logprobs), want, atol=1e-5, rtol=0)


def test_each_prompt_is_encoded_once_per_group(model, prompts, tiny_tokenizer):
    seen: list[tuple[int, int]] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        got = rollout(model, prompts, 5, SamplingParams(max_completion_length=6), [tiny_tokenizer.eos_token_id],
                      tiny_tokenizer.pad_token_id, seed=0)
    finally:
        hook.remove()
    assert seen[0] == (len(prompts), max(len(p) for p in prompts))  # the prefill: P rows, not P * G
    assert all(shape[1] == 1 for shape in seen[1:])  # then one token per row per step, from the cache
    assert len(seen) == 6 and len(got.completion_ids) == 15


def test_greedy_equals_generate_greedy(model, prompts, tiny_tokenizer):
    sp = SamplingParams(do_sample=False, max_completion_length=16)
    eos, pad = [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id
    expected = reference_generate(model, prompts, 2, sp, eos, pad)
    got = HFGenerator(model, eos, pad).generate(prompts, 2, sp)
    assert got.completion_ids == expected
    assert got.completion_ids[0] == got.completion_ids[1]  # greedy: the group's rows agree


def test_truncation_counts_and_training_mode_restored(tiny_tokenizer, prompts, frequent_tokens, one_thread):
    model = tiny_llama(len(tiny_tokenizer), seed=0)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5  # would scramble the log-probs if sampling ran in training mode
    model.train()
    model.model.layers[1].eval()  # a mixed state must come back as it was, module by module
    modes = {name: m.training for name, m in model.named_modules()}
    sp = SamplingParams(max_completion_length=10)
    got = rollout(model, prompts, 4, sp, frequent_tokens, pad=0, seed=5)

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert got.generated_tokens == sum(len(c) for c in got.completion_ids)
    for completion, truncated in zip(got.completion_ids, got.truncated):
        stopped = completion[-1] in frequent_tokens
        assert truncated == (not stopped)
        assert truncated == (len(completion) == sp.max_completion_length and completion[-1] not in frequent_tokens)
        assert not any(t in frequent_tokens for t in completion[:-1])
    assert any(got.truncated) and not all(got.truncated)
    assert got.seconds > 0 and got.tokens_per_second > 0

    model.eval()
    completion = got.completion_ids[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0] + completion])).logits[0, len(prompts[0]) - 1: -1]
    want = logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(got.logprobs[0]), want, atol=1e-5, rtol=0)


def test_generator_protocol_and_bad_calls(model):
    generator = HFGenerator(model, [1, 2], pad_token_id=0)
    assert isinstance(generator, Generator)
    with pytest.raises(ValueError, match="num_generations"):
        generator.generate([[5, 6]], 0, SamplingParams())
    with pytest.raises(ValueError, match="prompt_ids"):
        generator.generate([[5, 6], []], 2, SamplingParams())
    with pytest.raises(ValueError, match="eos_token_id"):
        HFGenerator(model, [], pad_token_id=0)


@pytest.mark.parametrize("value", [1, 3, 50, 400])
def test_top_k_filter_is_transformers_warper(value):
    from transformers.generation.logits_process import TopKLogitsWarper

    scores = torch.randn(6, 320, generator=torch.Generator().manual_seed(value)).round(decimals=1)  # with ties
    assert torch.equal(top_k_filter(scores, value), TopKLogitsWarper(value)(None, scores))


@pytest.mark.parametrize("value", [1e-9, 1e-4, 0.1, 0.5, 0.9, 0.999])
def test_top_p_filter_is_transformers_warper(value):
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = torch.randn(6, 320, generator=torch.Generator().manual_seed(0)) * 3
    scores[0, 5:] = float("-inf")  # a row already cut by top-k
    assert torch.equal(top_p_filter(scores, value), TopPLogitsWarper(value)(None, scores))
    assert (top_p_filter(scores, value) > float("-inf")).sum(-1).min() >= 1


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", float("nan")), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 2.5),
    ("max_completion_length", 0), ("max_completion_length", 3.0), ("do_sample", "yes"), ("sampler", "gumbel"),
])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError) as err:
        SamplingParams(**{field: value})
    message = str(err.value)
    assert f"SamplingParams.{field}" in message and "\n" not in message


def test_off_values_are_accepted():
    assert SamplingParams(top_k=0, top_p=1.0, temperature=1).temperature == 1.0
    assert SamplingParams(top_k=None).top_k is None


def test_ranks_in_lockstep_step_until_every_rank_is_done_and_sample_the_same(model, prompts, frequent_tokens):
    """``rows_left_everywhere`` (FSDP2: every forward is a collective): finished rows stay in the batch and the loop
    runs while another rank still has rows, yet the completions, log-probs and RNG stream are those of one rank."""
    sp = SamplingParams(temperature=0.9, top_k=100, max_completion_length=24)
    torch.manual_seed(3)
    alone = HFGenerator(model, frequent_tokens, pad_token_id=0).generate(prompts, 4, sp)
    after_alone = torch.rand(3)
    calls = []

    def other_rank_busy(left: int) -> int:  # another rank keeps 2 rows going through step 12
        calls.append(left)
        return left + (2 if len(calls) < 12 else 0)

    torch.manual_seed(3)
    synced = HFGenerator(model, frequent_tokens, pad_token_id=0, rows_left_everywhere=other_rank_busy).generate(
        prompts, 4, sp)
    assert synced.completion_ids == alone.completion_ids and synced.truncated == alone.truncated
    assert all(abs(a - b) < 1e-5 for x, y in zip(synced.logprobs, alone.logprobs) for a, b in zip(x, y))
    assert len(calls) >= 12 and (calls[-1] == 0 or len(calls) == sp.max_completion_length - 1)
    assert min(len(c) for c in alone.completion_ids) < 12  # some rows did finish while the other rank went on
    assert torch.equal(torch.rand(3), after_alone)


@pytest.mark.parametrize("sampler", ["multinomial", "inverse_cdf"])
def test_each_sampler_draws_from_the_filtered_distribution(model, prompts, sampler):
    """4000 first tokens of one prompt against softmax(logits / T) after top-k: total variation under 0.04."""
    sp = SamplingParams(temperature=0.8, top_k=12, max_completion_length=1, sampler=sampler)
    torch.manual_seed(11)
    got = HFGenerator(model, eos_token_id=[0], pad_token_id=0).generate(prompts[:1], 4000, sp)
    with torch.no_grad():
        logits = model(torch.tensor(prompts[:1])).logits[0, -1].float() / sp.temperature
    want = top_k_filter(logits[None], 12).softmax(-1)[0]
    seen = torch.bincount(torch.tensor([c[0] for c in got.completion_ids]), minlength=want.numel()).double() / 4000
    assert set(torch.nonzero(seen).squeeze(1).tolist()) <= set(torch.nonzero(want).squeeze(1).tolist())
    assert 0.5 * float((seen - want.double()).abs().sum()) < 0.04
