"""Packing throughput on the quickstart task: real (non-pad) tokens per second, packed vs padded, in one process.

The runs are the quickstart recipe (LoRA r8 on all linear layers of the embedded
SmolLM2-135M-Instruct, data/quickstart): ``padded`` = micro-batches of 8 rows padded to the
longest row by ``default_collater``; ``packed`` = one row of ``packed_sequence_size`` 512
under SDPA with the block-causal mask; ``packed_sdpa`` = the same packs with the
``packed_sdpa`` attention, which computes each document's attention alone. Steps alternate
between the runs so that a change in machine load hits all alike; only tokens of real
documents count. Timed on one thread, so other processes on the machine disturb it least.

What the measurement shows (and why it is not 2x): the quickstart rows are 50-58 tokens,
so padding to the batch maximum wastes only ~7% of the padded run's tokens; removing it
is worth 1 / (1 - 0.067) = 1.07x. A 512-token pack under a block-causal mask also pays for
512 x 512 attention scores where 8 rows of ~58 tokens pay for 8 x 58 x 58 (~15% of a
step), which leaves plain packing slower than padding here (measured 0.89-0.94x).
Attention per document (``packed_sdpa``) removes that cost: packing then runs 1.10-1.14x
the padded rate (a little above the padding share, since the fixed per-step work is spread
over 512 instead of ~430 real tokens). Packing pays off where row lengths vary (chat, xLAM) or where the padded
baseline pads to a fixed length, not on near-uniform rows like these.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_llama_config
from nemo_like.components.datasets.llm.packed_attention import packed_sdpa_attention_forward
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence, block_causal_mask, document_ids
from nemo_like.config.loader import load_yaml_config
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

WARMUP, ROUNDS = 1, 4
PACK = 512
RUNS = ("padded", "packed", "packed_sdpa")


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_packed_sdpa_leaves_padded_batches_and_generation_to_sdpa(one_thread):
    reference, packed = _tiny_pair()
    ids = torch.randint(0, 320, (3, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    assert torch.equal(reference(input_ids=ids, attention_mask=mask).logits,
                       packed(input_ids=ids, attention_mask=mask).logits)
    want = reference.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(packed.generate(ids[:1], max_new_tokens=4, do_sample=False), want)


def test_per_document_attention_of_a_pack_is_much_cheaper_than_the_block_mask(one_thread):
    """One attention layer of SmolLM2's shape (9 heads of 64, 3 key/value heads) over a 512-token pack."""
    lengths = [57] * 8 + [PACK - 57 * 8]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    mask = block_causal_mask(positions)
    q = torch.randn(1, 9, PACK, 64, requires_grad=True)
    kv = [torch.randn(1, 3, PACK, 64, requires_grad=True) for _ in range(2)]
    module = torch.nn.Module()
    module.num_key_value_groups = 3

    def masked():
        return F.scaled_dot_product_attention(q, *kv, attn_mask=mask, enable_gqa=True).transpose(1, 2)

    def per_document():
        return packed_sdpa_attention_forward(module, q, *kv, mask, position_ids=positions)[0]

    assert (masked() - per_document()).abs().max() < 1e-5
    times: dict[str, list[float]] = {"masked": [], "per_document": []}
    for _ in range(8):
        for name, fn in (("masked", masked), ("per_document", per_document)):
            start = time.perf_counter()
            fn().sum().backward()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t[1:]) for name, t in times.items()}
    print(f"\none attention layer, forward + backward, 512-token pack: block mask {1e3 * best['masked']:.1f} ms, "
          f"per document {1e3 * best['per_document']:.1f} ms")
    assert best["per_document"] * 2 < best["masked"]


# ---------------------------------------------------------------------------------------------- the figures
def _recipe(run: str) -> TrainFinetuneRecipeForNextTokenPrediction:
    cfg = load_yaml_config(REPO / "recipes" / "smollm2_135m" / "sft_quickstart.yaml")
    for section in ("generation_eval", "validation_dataset", "validation_dataloader"):
        del cfg[section]
    for key, value in {"checkpoint.enabled": False, "step_scheduler.max_steps": 1000,
                       "step_scheduler.val_every_steps": None, "dist_env.backend": "gloo",
                       "disable_progress_bar": True}.items():
        cfg.set_by_path(key, value)
    assert cfg.get("peft.dim") == 8 and cfg.get("peft.match_all_linear") is True
    if run != "padded":
        cfg.set_by_path("packed_sequence.packed_sequence_size", PACK)
        cfg.set_by_path("step_scheduler.local_batch_size", 1)  # one pack (~9.5 rows) against 8 padded rows
        cfg.set_by_path("step_scheduler.global_batch_size", 1)
    if run == "packed_sdpa":
        cfg.set_by_path("model.attn_implementation", "packed_sdpa")
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    return recipe


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of real documents: the attention mask of a padded batch; a pack minus its trailing padding block."""
    mask = batch["attention_mask"]
    if mask.dim() == 2:
        return int(mask.sum())
    count = 0
    for positions, labels in zip(batch["position_ids"], batch["labels"]):
        docs = document_ids(positions)
        last = docs == docs.max()
        padding = int(last.sum()) if bool((labels[last] == -100).all()) else 0  # real rows always carry labels
        count += positions.numel() - padding
    return count


@pytest.fixture(scope="module")
def figures() -> dict[str, dict[str, float]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {run: _recipe(run) for run in RUNS}
        assert runs["packed_sdpa"].model.config._attn_implementation == "packed_sdpa"
        iterators = {run: iter(recipe.dataloader) for run, recipe in runs.items()}
        totals = {run: {"real": 0, "all": 0, "seconds": 0.0} for run in runs}
        for round_ in range(WARMUP + ROUNDS):
            for run, recipe in runs.items():
                batch = next(iterators[run])
                start = time.perf_counter()
                recipe._run_train_optim_step([batch])
                seconds = time.perf_counter() - start
                if round_ >= WARMUP:
                    totals[run]["real"] += real_tokens(batch)
                    totals[run]["all"] += batch["input_ids"].numel()
                    totals[run]["seconds"] += seconds
        packs = runs["packed"].dataset
    finally:
        torch.set_num_threads(before)
    assert isinstance(packs, PackedSequence)
    out: dict[str, dict[str, float]] = {}
    print()
    for run, t in totals.items():
        f = out[run] = {"real_tps": t["real"] / t["seconds"], "pad_fraction": 1 - t["real"] / t["all"],
                        "real_per_step": t["real"] / ROUNDS, "seconds_per_step": t["seconds"] / ROUNDS}
        print(f"{run:11s}: {f['real_tps']:6.1f} real tokens/s on one thread | {f['real_per_step']:4.0f} real tokens "
              f"a step in {f['seconds_per_step']:.2f} s | padding {100 * f['pad_fraction']:.1f}% of tokens")
    ceiling = 1 / (1 - out["padded"]["pad_fraction"])
    ratios = {run: out[run]["real_tps"] / out["padded"]["real_tps"] for run in ("packed", "packed_sdpa")}
    print(f"packed / padded: {ratios['packed']:.2f}x with the block mask, {ratios['packed_sdpa']:.2f}x with "
          f"packed_sdpa; removing all padding can give at most {ceiling:.2f}x on this data "
          f"(pack fill {100 * packs.stats['fill_ratio']:.1f}%, 1-min load average {os.getloadavg()[0]:.1f})")
    out["summary"] = {"ceiling": ceiling, "fill_ratio": packs.stats["fill_ratio"], **ratios}
    return out


def test_packing_on_the_quickstart_task_real_tokens_per_second(figures):
    summary = figures["summary"]
    assert summary["fill_ratio"] > 0.99 and figures["packed"]["pad_fraction"] < 0.01
    assert 0.04 < figures["padded"]["pad_fraction"] < 0.10  # rows of 50-58 tokens: little padding to remove
    assert summary["ceiling"] < 1.15  # the padding that packing removes is worth far less than 2x here
    # The rates themselves are reported above, not asserted: timings belong to benchmarks, and
    # a shared machine moves them by more than the differences measured here.
    assert all(figures[run]["real_tps"] > 0 for run in RUNS), figures
