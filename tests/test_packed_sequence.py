"""Packed sequences: same loss and gradients as the documents run one by one, no cross-document attention."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import REPO, addition_rows, packed_row, tiny_llama_config, write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.packed_sequence import (
    PackedSequence,
    block_causal_mask,
    pack_dataset,
    prepare_packed_attention,
)
from nemo_like.components.datasets.utils import packed_sequence_collater
from nemo_like.components.loss.masked_ce import MaskedCrossEntropy
from nemo_like.config.loader import ConfigError, load_yaml_config
from nemo_like.recipes.llm.run import main
from nemo_like.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

MAPPING = {"context": "instruction", "question": "input", "answer": "response"}
TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")


@pytest.fixture()
def docs(tmp_path, tiny_tokenizer) -> ColumnMappedTextInstructionDataset:
    rows = addition_rows(10)
    rows[3]["input"] = "What is 3 plus 4? Then what is 12 plus 13? Then what is 1 plus 2?"  # unequal lengths
    return ColumnMappedTextInstructionDataset(write_jsonl(tmp_path / "d.jsonl", rows), MAPPING, tiny_tokenizer,
                                              answer_only_loss_mask=False)


def _model(tokenizer, attn: str) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer)))
    model.config._attn_implementation = attn
    return model.float()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_documents_one_by_one(docs, tiny_tokenizer, attn):
    torch.set_num_threads(1)
    packed = PackedSequence(docs, packed_sequence_size=96, pad_token_id=tiny_tokenizer.pad_token_id)
    assert packed.stats["documents"] == len(docs) and len(packed) < len(docs)
    model, loss_fn = _model(tiny_tokenizer, attn), MaskedCrossEntropy()
    batch = packed_sequence_collater([packed[i] for i in range(len(packed))], pad_token_id=tiny_tokenizer.pad_token_id)
    assert batch["attention_mask"].shape == (len(packed), 1, 96, 96) and batch["attention_mask"].dtype == torch.bool
    n = (batch["labels"] != -100).sum()
    inputs = prepare_packed_attention({k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}, attn)
    packed_sum = loss_fn(model(**inputs).logits, batch["labels"])
    (packed_sum / n).backward()
    packed_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    single_sum = torch.zeros(())
    for sample in docs:
        ids, labels = torch.tensor([sample["input_ids"]]), torch.tensor([sample["labels"]])
        loss = loss_fn(model(input_ids=ids).logits, labels)
        (loss / n).backward()
        single_sum += loss.detach()
    loss_diff = abs(packed_sum.item() - single_sum.item()) / n.item()
    grad_diff = max((packed_grads[name] - p.grad).abs().max().item() for name, p in model.named_parameters())
    print(f"\n[{attn}] packed vs one by one: per-token loss diff {loss_diff:.2e}, "
          f"summed loss {packed_sum.item():.4f} vs {single_sum.item():.4f}, max grad diff {grad_diff:.2e}")
    assert n.item() == sum(sum(1 for t in s["labels"] if t != -100) for s in docs)  # normalised by label tokens
    assert loss_diff < 1e-5 and abs(packed_sum.item() - single_sum.item()) <= 1e-5 * abs(single_sum.item())
    assert grad_diff < 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "packed_sdpa"])
def test_the_padding_block_of_a_pack_is_left_out_and_changes_no_loss_or_gradient(docs, tiny_tokenizer, attn):
    """The collater drops a pack's trailing padding block (computing it made packs of short rows slower than
    padding): the batch is as wide as its longest real row, with the loss and gradients of the full-width packs."""
    from nemo_like.components.datasets.utils import default_collater

    torch.set_num_threads(1)
    packed = PackedSequence(docs, packed_sequence_size=96, pad_token_id=tiny_tokenizer.pad_token_id)


    def real(row: dict) -> int:  # the tokens before the padding block (the last 0 position of an unlabelled tail)
        last = max(i for i, p in enumerate(row["position_ids"]) if p == 0)
        return last if all(x == -100 for x in row["labels"][last:]) else len(row["input_ids"])

    rows = [r for r in (packed[i] for i in range(len(packed))) if real(r) < 96]  # the packs with a padding block
    assert len(rows) >= 2
    model, loss_fn = _model(tiny_tokenizer, attn), MaskedCrossEntropy()
    results = []
    for trimmed in (True, False):
        if trimmed:
            batch = packed_sequence_collater(rows, pad_token_id=tiny_tokenizer.pad_token_id)
        else:  # the full-width packs, as they were collated before
            batch = default_collater(rows, pad_token_id=tiny_tokenizer.pad_token_id)
            batch["attention_mask"] = block_causal_mask(batch["position_ids"])
        inputs = prepare_packed_attention({k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}, attn)
        loss = loss_fn(model(**inputs).logits, batch["labels"])
        (loss / (batch["labels"] != -100).sum()).backward()
        results.append((batch["input_ids"].shape[1], loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad()
    (width, loss, grads), (full_width, full_loss, full_grads) = results
    assert full_width == 96 and width == max(map(real, rows)) < 96
    assert abs(loss - full_loss) <= 1e-6 * abs(full_loss)
    assert max((grads[n] - full_grads[n]).abs().max().item() for n in grads) < 1e-6


def test_a_token_of_document_two_gets_no_gradient_from_document_one(docs, tiny_tokenizer):
    torch.set_num_threads(1)
    packed = PackedSequence(docs, packed_sequence_size=96)
    batch = packed_sequence_collater([packed[0]], pad_token_id=tiny_tokenizer.pad_token_id)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    doc1, doc2 = slice(starts[0], starts[1]), slice(starts[1], starts[2])
    model = _model(tiny_tokenizer, "sdpa")

    def grad_of_doc2_on_doc1(mask: torch.Tensor) -> float:
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch["position_ids"]).logits
        logits[0, doc2].sum().backward()
        return embeds.grad[0, doc1].abs().max().item()

    assert grad_of_doc2_on_doc1(batch["attention_mask"]) == 0.0
    # Restarting positions alone is not enough: with a plain padding mask document 1 leaks into document 2.
    assert grad_of_doc2_on_doc1(torch.ones_like(batch["input_ids"])) > 0.0


def test_positions_restart_padding_is_its_own_block_and_stats_logged_once(docs, caplog):
    with caplog.at_level(logging.INFO, logger="nemo_like"):
        packed = PackedSequence(docs, packed_sequence_size=96, pad_token_id=7, packing_strategy="sequential")
    lines = [r.getMessage() for r in caplog.records if "packed sequences" in r.getMessage()]
    assert len(lines) == 1 and f"{len(docs)} documents into {len(packed)} packs of 96 tokens" in lines[0]
    stats = packed.stats
    real = sum(len(s["input_ids"]) for s in docs)
    assert stats["tokens"] == real and stats["fill_ratio"] == pytest.approx(real / (96 * len(packed)))
    assert f"fill ratio {100 * stats['fill_ratio']:.1f}%" in lines[0]
    assert all(len(pack["input_ids"]) == len(pack["labels"]) == len(pack["position_ids"]) == 96 for pack in packed)
    # Sequential packing keeps the order: the documents come back one after another, positions 0..len-1 each.
    first = packed[0]
    n0 = len(docs[0]["input_ids"])
    assert first["input_ids"][:n0] == docs[0]["input_ids"] and first["position_ids"][:n0] == list(range(n0))
    assert first["position_ids"][n0] == 0
    last = packed[len(packed) - 1]
    in_last = sum(len(s["input_ids"]) for s in docs[-2:])  # 4 packs: the last holds the last two documents
    assert len(packed) == 4 and last["input_ids"][in_last:] == [7] * (96 - in_last)
    assert last["labels"][in_last:] == [-100] * (96 - in_last) and last["position_ids"][in_last] == 0
    mask = block_causal_mask(torch.tensor([last["position_ids"]]))[0, 0]
    assert mask.any(dim=-1).all()  # every row (padding too) sees at least itself: no NaN under SDPA


def test_strategies_keep_every_document_whole_and_max_fill_packs_fullest():
    lengths = [40, 70, 45, 70, 60, 30, 70, 55]  # 440 tokens: 5 packs of 100 at best
    docs = [{"input_ids": [n] * n, "labels": [n] * n} for n in lengths]
    packs = {}
    for strategy in ("max_fill", "best_fit", "sequential"):
        packed = PackedSequence(docs, packed_sequence_size=100, packing_strategy=strategy)
        packs[strategy] = packed.stats["packs"]
        blocks = [run for pack in packed for run in _blocks(pack) if run[0] != 0]
        assert sorted(len(run) for run in blocks) == sorted(lengths)  # every document whole, none cut
        for pack in packed:  # dataset order inside a pack
            firsts = [run[0] for run in _blocks(pack) if run[0] != 0]
            assert firsts == sorted(firsts, key=lengths.index)
    assert packs == {"max_fill": 5, "best_fit": 6, "sequential": 7}
    with pytest.raises(ConfigError, match="packing_strategy: 'tightest' is not one of"):
        pack_dataset(docs, packed_sequence_size=100, packing_strategy="tightest")


def _blocks(pack: dict) -> list[list[int]]:
    """The token runs of a pack, split where position_ids restart."""
    runs: list[list[int]] = []
    for token, pos in zip(pack["input_ids"], pack["position_ids"]):
        if pos == 0:
            runs.append([])
        runs[-1].append(token)
    return runs


def test_split_across_pack_keeps_every_token_and_label(docs):
    size = 20  # shorter than every document
    packed = PackedSequence(docs, packed_sequence_size=size, split_across_pack=True, packing_strategy="sequential")
    ids = [t for pack in packed for t in pack["input_ids"]][: packed.stats["tokens"]]
    labels = [p for pack in packed for p in pack["labels"]][: packed.stats["tokens"]]
    assert ids == [t for s in docs for t in s["input_ids"]]
    assert labels == [t for s in docs for t in s["labels"]]
    assert all(len(pack["input_ids"]) == size for pack in packed)
    assert packed.stats["fill_ratio"] > 0.95
    best = PackedSequence(docs, packed_sequence_size=size, split_across_pack=True)
    assert best.stats["tokens"] == packed.stats["tokens"] and best.stats["documents"] == len(docs)


def test_too_long_document_names_the_row_or_is_skipped_and_counted(docs, caplog):
    with pytest.raises(DatasetError, match=r"d\.jsonl:4: \d+ tokens exceed packed_sequence_size 30"):
        PackedSequence(docs, packed_sequence_size=30)
    with caplog.at_level(logging.INFO, logger="nemo_like"):
        packed = PackedSequence(docs, packed_sequence_size=30, skip_long_samples=True)
    assert packed.stats["skipped_too_long"] == 1 and packed.stats["documents"] == len(docs) - 1
    assert "skipped 1 longer than a pack" in caplog.text
    with pytest.raises(ConfigError, match="packed_sequence.split_accross_pack: unknown option"):
        pack_dataset(docs, packed_sequence_size=30, split_accross_pack=True)
    assert pack_dataset(docs, packed_sequence_size=0) is docs


def test_flash_attention_gets_position_ids_and_no_dense_mask():
    batch = packed_sequence_collater([{"input_ids": [5, 6, 7], "labels": [6, -100, 8], "position_ids": [0, 1, 0]}])
    inputs = prepare_packed_attention(dict(batch), "flash_attention_2")
    assert "attention_mask" not in inputs and inputs["position_ids"].tolist() == [[0, 1, 0]]
    eager = prepare_packed_attention(dict(batch), "eager", torch.bfloat16)["attention_mask"]
    assert eager.dtype == torch.bfloat16 and eager[0, 0, 2, 1] == torch.finfo(torch.bfloat16).min
    assert eager[0, 0, 1, 0] == 0


@pytest.fixture()
def env(monkeypatch, tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "data" / "train.jsonl", addition_rows(16))
    monkeypatch.setenv("TEST_MODEL_DIR", tiny_model_dir)
    monkeypatch.setenv("TEST_TRAIN_JSONL", train)
    monkeypatch.setenv("TEST_VAL_JSONL", write_jsonl(tmp_path / "data" / "val.jsonl", addition_rows(4, offset=3)))
    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path / "ckpt"))
    return tmp_path


def _first_step(packing: dict | None, local: int) -> tuple[float, TrainFinetuneRecipeForNextTokenPrediction]:
    cfg = load_yaml_config(TINY)
    if packing:
        cfg.set_by_path("packed_sequence", packing)
    cfg.set_by_path("step_scheduler.local_batch_size", local)
    cfg.set_by_path("step_scheduler.global_batch_size", local)
    cfg.set_by_path("step_scheduler.max_steps", 1)
    cfg.set_by_path("checkpoint.enabled", False)
    recipe = TrainFinetuneRecipeForNextTokenPrediction(cfg)
    recipe.setup()
    return recipe.run_train_validation_loop()["history"][0]["loss"], recipe


def test_recipe_packed_step_has_the_unpacked_loss(env):
    torch.set_num_threads(1)
    unpacked, _ = _first_step(None, local=16)
    probe = _first_step({"packed_sequence_size": 128, "split_across_pack": False}, local=1)[1]
    packs = len(probe.dataset)
    assert isinstance(probe.dataset, PackedSequence) and isinstance(probe.val_dataset, PackedSequence)
    packed, recipe = _first_step({"packed_sequence_size": 128, "split_across_pack": False}, local=packs)
    print(f"\nrecipe first step: unpacked {unpacked:.7f}, packed ({packs} packs of 128) {packed:.7f}, "
          f"fill ratio {recipe.dataset.stats['fill_ratio']:.1%}")
    assert abs(packed - unpacked) < 1e-5


def test_recipe_reports_a_too_long_document_in_one_line(env, capsys):
    rc = main(["--config", TINY, "--packed_sequence.packed_sequence_size", "16"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith("error: ") and "train.jsonl:1" in line and "packed_sequence_size 16" in line


QUICKSTART = REPO / "data" / "quickstart" / "train.jsonl"


@pytest.mark.skipif(not QUICKSTART.exists(), reason="data/quickstart/train.jsonl is not generated yet")
def test_sft_packed_recipe_runs_on_a_tiny_model(tmp_path, monkeypatch, tiny_model_dir, capsys):
    monkeypatch.chdir(REPO)
    args = ["--config", "recipes/smollm2_135m/sft_packed.yaml", "--model.pretrained_model_name_or_path", tiny_model_dir,
            "--step_scheduler.max_steps", "1", "--step_scheduler.global_batch_size", "1",
            "--step_scheduler.local_batch_size", "1", "--step_scheduler.val_every_steps", "1",
            "--dataset.limit_dataset_samples", "24", "--validation_dataset.limit_dataset_samples", "8",
            "--packed_sequence.packed_sequence_size", "256",
            "--checkpoint.checkpoint_dir", str(tmp_path / "ckpt"), "--peft.dim", "4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("packed sequences (max_fill): 24 documents into") == 1  # logged once
    # Without packing the packed collater is refused at set-up, naming the key.
    assert main([*args, "--packed_sequence.packed_sequence_size", "0"]) == 2


@pytest.mark.skipif(not QUICKSTART.exists(), reason="data/quickstart/train.jsonl is not generated yet")
def test_quickstart_fill_ratio_at_512_with_the_smollm2_tokenizer():
    from nemo_like._transformers.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    for chat in (False, True):
        ds = ColumnMappedTextInstructionDataset(str(QUICKSTART), {"question": "question", "answer": "answer"},
                                                tokenizer, use_hf_chat_template=chat)
        packed = PackedSequence(ds, packed_sequence_size=512)
        sequential = PackedSequence(ds, packed_sequence_size=512, packing_strategy="sequential")
        print(f"\nquickstart at 512, chat template {chat}: {packed.stats['documents']} documents, "
              f"{packed.stats['packs']} packs, fill ratio {packed.stats['fill_ratio']:.2%} "
              f"(sequential {sequential.stats['fill_ratio']:.2%})")
        assert packed.stats["fill_ratio"] >= 0.99


# ---------------------------------------------------------------- planning at scale (lengths only)
def _lognormal_lengths(n: int, size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(size / 16), 1.0, n), 8, size).astype(np.int64)


def _check_plan(plan, lengths, size: int) -> None:
    """No pack over the size, every document exactly once and whole, dataset order inside a pack."""
    import numpy as np

    per_pack = np.add.reduceat(plan.length, plan.pack_offsets[:-1])
    assert len(plan) > 0 and per_pack.max() <= size and (np.diff(plan.pack_offsets) > 0).all()
    assert np.array_equal(np.sort(plan.doc), np.arange(len(lengths)))
    assert (plan.start == 0).all() and np.array_equal(plan.length, lengths[plan.doc])
    inside = np.diff(plan.doc)[np.diff(np.repeat(np.arange(len(plan)), np.diff(plan.pack_offsets))) == 0]
    assert (inside > 0).all()


@pytest.mark.parametrize("strategy", ["max_fill", "best_fit", "sequential"])
def test_planner_on_200k_lengths_keeps_every_document_once_within_the_size(strategy):
    from nemo_like.components.datasets.llm.pack_planner import plan_packs

    size = 2048
    lengths = _lognormal_lengths(200_000, size)
    plan = plan_packs(lengths, size, strategy)
    _check_plan(plan, lengths, size)
    assert plan.tokens == lengths.sum()


@pytest.mark.parametrize("low, high, size", [(90, 160, 512), (8, 2048, 2048)])
def test_planner_at_scale_stays_within_a_point_of_max_fill_on_a_sample(low, high, size):
    """Many documents (max_fill past its budget, or runs placed at once) vs the exact per-pack max_fill."""
    import numpy as np

    from nemo_like.components.datasets.llm import pack_planner

    rng = np.random.default_rng(1)
    if high == size:
        big = _lognormal_lengths(200_000, size, seed=1)
    else:
        big = rng.integers(low, high, 200_000)
    sample = big[:5_000]
    reference = pack_planner._max_fill(sample, size)  # the per-pack exact subset sums, no budget
    fill = lambda plan: plan.tokens / (len(plan) * size)  # noqa: E731
    scaled = pack_planner.plan_packs(big, size)
    _check_plan(scaled, big, size)
    assert fill(scaled) >= fill(reference) - 0.01
    assert fill(scaled) >= fill(pack_planner.plan_packs(big, size, "best_fit")) - 1e-9  # never below best_fit


def test_max_fill_past_its_budget_falls_back_to_the_fuller_best_fit(monkeypatch, caplog):
    from nemo_like.components.datasets.llm import pack_planner

    monkeypatch.setattr(pack_planner, "MAX_FILL_STEP_BUDGET", 1_000)
    lengths = _lognormal_lengths(20_000, 1024)
    with caplog.at_level(logging.WARNING, logger="nemo_like"):
        plan = pack_planner.plan_packs(lengths, 1024)
    assert plan.strategy in ("best_fit", "best_fit_decreasing") and "too many for max_fill" in caplog.text
    _check_plan(plan, lengths, 1024)
    assert len(plan) <= len(pack_planner.plan_packs(lengths, 1024, "best_fit"))


def test_packs_are_built_when_read_and_split_pieces_keep_every_token():
    rows = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in (5, 23, 7, 40, 3)]
    packed = PackedSequence(rows, packed_sequence_size=16, split_across_pack=True)
    assert not hasattr(packed, "packs") and packed[-1] == packed[len(packed) - 1]
    runs = sorted((run for i in range(len(packed)) for run in _blocks(packed[i]) if run[0] != 0), key=len)
    assert sum(len(r) for r in runs) == packed.stats["tokens"] == 78
    assert all(len(packed[i]["input_ids"]) == 16 for i in range(len(packed)))
    with pytest.raises(IndexError):
        packed[len(packed)]


def test_real_tokens_leave_out_pack_padding_and_the_batch_padding_of_a_shorter_pack():
    from nemo_like.components.datasets.llm.packed_sequence import real_tokens

    batch = packed_sequence_collater([packed_row([9, 4, 6], padding=5), packed_row([3, 5], padding=8)], pad_token_id=0)
    assert batch["input_ids"].shape == (2, 19)  # the padding blocks left out, the shorter pack padded to 19
    assert (batch["position_ids"][1, 8:] == 0).all()  # each batch padding token restarts at 0
    assert real_tokens(batch) == 9 + 4 + 6 + 3 + 5
    single = packed_sequence_collater([packed_row([9, 4, 6], padding=5)], pad_token_id=0)
    assert real_tokens(single) == 19
