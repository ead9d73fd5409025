"""Packing on the quickstart task: per-document attention equals the block mask, and packs carry real tokens.

The runs are the quickstart recipe (LoRA r8 on all linear layers of the embedded
SmolLM2-135M-Instruct, data/quickstart, rows of 50-59 tokens with a 13% tail of 120-340):
``padded`` = the recipe with packing off, micro-batches of 8 rows in random order padded to
the longest row by ``default_collater`` (plain SDPA); ``packed`` = the recipe as shipped,
one 512-token pack a step under ``packed_sdpa``. Only tokens of real documents count.

Why packing wins there: most padded batches hold a long row, so about 60% of a padded step's
tokens are padding; the pack is ~99% real tokens and computes each document's attention alone.
The speed itself (real tokens per second, packed against padded; one attention layer, per
document against the block mask) is measured by ``benchmarks/packing_speed.py``, not here.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_llama_config
from nemo_like.components.datasets.llm.packed_attention import packed_sdpa_attention_forward, plan_groups
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence, block_causal_mask, real_tokens
from nemo_like.config.loader import load_yaml_config
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

WARMUP, ROUNDS = 1, 3
PACK = 512
RUNS = ("padded", "packed")


# ---------------------------------------------------------------------------------------------- correctness first
def _tiny_pair():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    reference = LlamaForCausalLM(tiny_llama_config(320))
    reference.config._attn_implementation = "sdpa"
    packed = copy.deepcopy(reference)
    packed.set_attn_implementation("packed_sdpa")
    return reference, packed


def test_packed_sdpa_equals_the_block_causal_mask_and_each_document_alone(one_thread):
    reference, packed = _tiny_pair()
    assert packed.config._attn_implementation == "packed_sdpa"
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in ([5, 9, 3, 7], [12, 8, 4])])
    ids = torch.randint(0, 320, positions.shape, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 320, positions.shape, generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "position_ids": positions, "attention_mask": block_causal_mask(positions)}
    want, got = reference(**inputs).logits, packed(**inputs).logits
    assert (want - got).abs().max() < 1e-5
    alone = reference(input_ids=ids[:1, 5:14], position_ids=positions[:1, 5:14]).logits  # the second document
    assert (alone - got[:1, 5:14]).abs().max() < 1e-5
    F.cross_entropy(want.flatten(0, 1), labels.flatten()).backward()
    F.cross_entropy(got.flatten(0, 1), labels.flatten()).backward()
    for (name, a), b in zip(reference.named_parameters(), packed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


def test_packed_sdpa_loss_equals_the_block_mask_loss_when_documents_are_attended_alone_and_in_groups(one_thread):
    """A long document alone on a slice of its row, short ones gathered into one call: the loss of the model."""
    reference, packed = _tiny_pair()
    rows = ([200, 7, 9, 6, 8], [6, 60, 5, 9, 150])
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows])
    ids = torch.randint(0, 320, positions.shape, generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, 320, positions.shape, generator=torch.Generator().manual_seed(6))
    inputs = {"input_ids": ids, "position_ids": positions, "attention_mask": block_causal_mask(positions)}
    assert [len(g) for g in plan_groups([200, 7, 9, 6, 8, 6, 60, 5, 9, 150])] == [1, 1, 1, 7]  # both kinds of call
    want = F.cross_entropy(reference(**inputs).logits.flatten(0, 1), labels.flatten())
    got = F.cross_entropy(packed(**inputs).logits.flatten(0, 1), labels.flatten())
    assert abs(got.item() - want.item()) <= 1e-6 * abs(want.item())


def test_packed_sdpa_leaves_padded_batches_and_generation_to_sdpa(one_thread):
    reference, packed = _tiny_pair()
    ids = torch.randint(0, 320, (3, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    assert torch.equal(reference(input_ids=ids, attention_mask=mask).logits,
                       packed(input_ids=ids, attention_mask=mask).logits)
    want = reference.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(packed.generate(ids[:1], max_new_tokens=4, do_sample=False), want)


@pytest.mark.parametrize("rows", [
    [[339, 57, 55, 58]],  # the quickstart's long tail: the long document alone, the short ones in one call
    [[8] * 64],  # many tiny documents: one shared call
    [[300, 8, 9, 7, 100, 50, 38]],  # mixed lengths: groups out of token order, restored
    [[5, 9, 3, 7, 12], [12, 8, 4, 12]],  # two rows: shared calls take documents of both
    [[500, 12], [512]],  # a row that is one document beside a packed one
])
def test_grouped_documents_give_the_block_causal_attention_and_its_gradients(one_thread, rows):
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows])
    batch, seq = positions.shape
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(batch, 9, seq, 16, generator=gen, requires_grad=True)
    kv = [torch.randn(batch, 3, seq, 16, generator=gen, requires_grad=True) for _ in range(2)]
    module = torch.nn.Module()
    want = F.scaled_dot_product_attention(q, *kv, attn_mask=block_causal_mask(positions), enable_gqa=True)
    got = packed_sdpa_attention_forward(module, q, *kv, None, position_ids=positions)[0]
    assert (want.transpose(1, 2) - got).abs().max() < 1e-5
    weights = torch.randn(got.shape, generator=gen)
    for a, b in zip(torch.autograd.grad((want.transpose(1, 2) * weights).sum(), [q, *kv]),
                    torch.autograd.grad((got * weights).sum(), [q, *kv])):
        assert (a - b).abs().max() < 1e-5


def test_a_document_longer_than_a_sliding_window_is_refused_not_attended_wrongly(one_thread):
    positions = torch.cat([torch.arange(12), torch.arange(5)])[None]
    q, k, v = torch.randn(1, 4, 17, 8), torch.randn(1, 2, 17, 8), torch.randn(1, 2, 17, 8)
    with pytest.raises(ValueError, match=r"longer than the model's sliding window \(8 tokens\)"):
        packed_sdpa_attention_forward(torch.nn.Module(), q, k, v, None, position_ids=positions, sliding_window=8)
    got = packed_sdpa_attention_forward(torch.nn.Module(), q, k, v, None, position_ids=positions, sliding_window=16)[0]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(positions), enable_gqa=True)
    assert (want.transpose(1, 2) - got).abs().max() < 1e-5  # within the window, the window changes nothing


def test_plan_groups_puts_long_documents_alone_and_short_ones_together():
    lengths = [339, 57, 55, 58, 8, 9, 7]
    groups = plan_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # a partition
    assert [0] in groups  # the long one alone: padding the short ones to it would cost far more than a call
    assert any({1, 2, 3} <= set(g) for g in groups)  # similar lengths share one call
    assert len(plan_groups([57] * 9)) == 1  # nine alike: one call
    assert plan_groups([]) == [] and plan_groups([40]) == [[0]]


def _benchmark():
    """``benchmarks/packing_speed.py`` as a module: the tests check the very cases it times."""
    spec = importlib.util.spec_from_file_location("packing_speed", REPO / "benchmarks" / "packing_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_per_document_attention_of_a_pack_equals_the_block_mask(one_thread):
    """One attention layer of SmolLM2's shape (9 heads of 64, 3 key/value heads) over a 512-token pack."""
    module, q, kv, mask, positions = _benchmark().attention_case()
    masked = F.scaled_dot_product_attention(q, *kv, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    per_document = packed_sdpa_attention_forward(module, q, *kv, mask, position_ids=positions)[0]
    assert (masked - per_document).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------- the tokens
def _recipe(run: str) -> TrainFinetuneRecipeForNextTokenPrediction:
    """The benchmark's own recipe for ``run`` (``benchmarks/packing_speed.py``), so these are the batches it times."""
    cfg = load_yaml_config(REPO / "recipes" / "smollm2_135m" / "sft_quickstart.yaml")
    assert cfg.get("peft.dim") == 8 and cfg.get("peft.match_all_linear") is True
    assert cfg.get("packed_sequence.packed_sequence_size") == PACK  # the shipped recipe packs
    assert cfg.get("model.attn_implementation") == "packed_sdpa"
    return _benchmark().quickstart_recipe(run)


@pytest.fixture(scope="module")
def figures() -> dict[str, dict[str, float]]:
    """Real and padding tokens of the batches the speed benchmark times (the first after one warm-up batch)."""
    runs = {run: _recipe(run) for run in RUNS}
    assert runs["packed"].model.config._attn_implementation == "packed_sdpa"
    iterators = {run: iter(recipe.dataloader) for run, recipe in runs.items()}
    totals = {run: {"real": 0, "all": 0} for run in runs}
    for round_ in range(WARMUP + ROUNDS):
        for run in runs:
            batch = next(iterators[run])
            if round_ >= WARMUP:
                totals[run]["real"] += real_tokens(batch)
                totals[run]["all"] += batch["input_ids"].numel()
    packs = runs["packed"].dataset
    assert isinstance(packs, PackedSequence)
    out: dict[str, dict[str, float]] = {}
    for run, t in totals.items():
        out[run] = {"pad_fraction": 1 - t["real"] / t["all"], "real_per_step": t["real"] / ROUNDS}
    out["summary"] = {"ceiling": 1 / (1 - out["padded"]["pad_fraction"]), "fill_ratio": packs.stats["fill_ratio"]}
    return out


def test_packing_on_the_quickstart_task_fills_its_packs_where_padding_wastes_most_tokens(figures):
    summary = figures["summary"]
    assert summary["fill_ratio"] >= 0.95 and figures["packed"]["pad_fraction"] < 0.02
    assert figures["padded"]["pad_fraction"] > 0.5, figures  # the long tail: most padded batches hold a long row
