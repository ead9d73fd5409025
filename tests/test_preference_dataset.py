"""PreferenceDataset: the same prompt / chosen / rejected tokens as TRL's DPO preprocessing, from cached tables."""

from __future__ import annotations

import json

import pytest
import torch
from trl.data_utils import _tokenize, common_prefix_length, extract_prompt

from conftest import write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.preference_dataset import PreferenceDataset


def _plain(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} plus {i + 1}?", "chosen": f" It is {2 * i + 1}.", "rejected": f" It is {i}."}
            for i in range(n)]


def _chats(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"What is {i} plus 2?"}]
        if i % 2:
            prompt = [{"role": "system", "content": "Add."}, *prompt]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": f"It is {i + 2}."}],
                     "rejected": [{"role": "assistant", "content": f"It is {i + 3}."}]})
    return rows


def _trl(tokenizer, row: dict) -> dict:
    """TRL's DPO preprocessing of one row (its own functions; EOS added to plain completions as it does)."""
    if "prompt" not in row:
        row = extract_prompt(row)
    conversational = isinstance(row["prompt"], list)
    if not conversational:
        eos = tokenizer.eos_token
        row = {**row, **{k: row[k] if row[k].endswith(eos) else row[k] + eos for k in ("chosen", "rejected")}}
    extra = {"add_generation_prompt": True} if conversational else {}
    prompt_ids = _tokenize(tokenizer, row["prompt"], **extra)["input_ids"]
    with_chosen = _tokenize(tokenizer, row["prompt"] + row["chosen"])["input_ids"]
    with_rejected = _tokenize(tokenizer, row["prompt"] + row["rejected"])["input_ids"]
    n = min(common_prefix_length(prompt_ids, with_chosen), common_prefix_length(prompt_ids, with_rejected))
    return {"prompt_ids": list(prompt_ids[:n]), "chosen_ids": list(with_chosen[n:]),
            "rejected_ids": list(with_rejected[n:])}


@pytest.mark.parametrize("form", ["plain", "conversational", "implicit prompt"])
def test_items_equal_trls_preprocessing(tmp_path, tiny_tokenizer, form):
    rows = _plain(12) if form == "plain" else _chats(12)
    if form == "implicit prompt":
        rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
    ds = PreferenceDataset(write_jsonl(tmp_path / "pairs.jsonl", rows), tiny_tokenizer, max_length=0)
    assert len(ds) == 12
    assert [ds[i] for i in range(12)] == [_trl(tiny_tokenizer, r) for r in rows]
    item = ds[3]
    assert tiny_tokenizer.eos_token_id in item["chosen_ids"]  # EOS / end of turn is part of each completion
    assert item["chosen_ids"] != item["rejected_ids"]


def test_column_mapping_split_and_limit(tmp_path, tiny_tokenizer):
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in _plain(10)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    ds = PreferenceDataset(path, tiny_tokenizer, column_mapping=mapping, split="train[2:8]", limit_dataset_samples=3,
                           max_length=0)
    expected = [_trl(tiny_tokenizer, r) for r in _plain(10)[2:5]]
    assert [ds[i] for i in range(len(ds))] == expected
    assert ds.location(0).endswith("pairs.jsonl:3")


def test_truncation_keeps_the_prompt_and_cuts_the_completions(tmp_path, tiny_tokenizer, caplog):
    rows = [{"prompt": "What is 1 plus 2?", "chosen": " It is 3, because one plus two is three.", "rejected": " 4"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    full = PreferenceDataset(path, tiny_tokenizer, max_length=0)[0]
    limit = len(full["prompt_ids"]) + 5
    with pytest.raises(DatasetError, match=r"pairs.jsonl:1: .*exceed"):
        PreferenceDataset(path, tiny_tokenizer, seq_length=limit, max_length=0)
    cut = PreferenceDataset(path, tiny_tokenizer, seq_length=limit, truncation=True, max_length=0)[0]
    assert cut["prompt_ids"] == full["prompt_ids"]
    assert cut["chosen_ids"] == full["chosen_ids"][:5]
    assert cut["rejected_ids"] == full["rejected_ids"][:5]
    with pytest.raises(DatasetError, match="the prompt alone"):
        PreferenceDataset(path, tiny_tokenizer, seq_length=3, truncation=True, max_length=0)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "hi", "chosen": "a"}, "column 'rejected'"),
    ({"prompt": "hi", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "all strings or all"),
    ({"prompt": "hi", "chosen": "  ", "rejected": "b"}, "empty chosen"),
    ({"chosen": "a", "rejected": "b"}, "only conversational rows may leave the prompt implicit"),
])
def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, tiny_tokenizer, row, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_plain(1)[0]) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"pairs.jsonl:2: .*{message}") as err:
        PreferenceDataset(str(path), tiny_tokenizer, max_length=0)
    assert "\n" not in str(err.value)


def test_padded_batches_equal_trls_collator(tmp_path, tiny_tokenizer):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from nemo_like.components.datasets.llm.preference_collater import preference_collater

    ds = PreferenceDataset(write_jsonl(tmp_path / "pairs.jsonl", _chats(6)), tiny_tokenizer, max_length=0)
    items = [ds[i] for i in range(5)]
    ours = preference_collater(items, pad_token_id=tiny_tokenizer.pad_token_id)
    theirs = DataCollatorForPreference(pad_token_id=tiny_tokenizer.pad_token_id)([dict(i) for i in items])
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours[key], theirs[key]), key
    wide = preference_collater(items, pad_token_id=0, pad_seq_len_divisible=16)
    assert wide["input_ids"].shape == (10, 16 * -(-ours["input_ids"].shape[1] // 16))
    assert torch.equal(wide["completion_mask"][:, : ours["input_ids"].shape[1]], ours["completion_mask"])


def test_packed_pairs_give_the_padded_and_the_one_by_one_log_probs(tmp_path, tiny_tokenizer, one_thread):
    """Sequence log-probs from a packed row (no padding computed) equal those of padded rows and of each
    sequence alone: the block-causal mask keeps every sequence to itself."""
    from conftest import tiny_llama
    from nemo_like.components.datasets.llm.preference_collater import (
        packed_preference_collater,
        preference_collater,
    )
    from nemo_like.components.loss.sequence_logps import sequence_logps

    model = tiny_llama(len(tiny_tokenizer)).eval()
    items = [PreferenceDataset(write_jsonl(tmp_path / "pairs.jsonl", _chats(4)), tiny_tokenizer, max_length=0)[i]
             for i in range(4)]
    with torch.no_grad():
        padded = preference_collater(items, pad_token_id=tiny_tokenizer.pad_token_id)
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        by_rows, counts = sequence_logps(logits, padded["input_ids"], padded["completion_mask"])
        packed = packed_preference_collater(items, pad_token_id=tiny_tokenizer.pad_token_id, pad_seq_len_divisible=64)
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                       attention_mask=packed["attention_mask"]).logits
        by_pack, pack_counts = sequence_logps(logits, packed["input_ids"], packed["completion_mask"],
                                              packed["sequence_index"], num_sequences=8)
        alone = []
        for key in ("chosen_ids", "rejected_ids"):
            for item in items:
                ids = torch.tensor([item["prompt_ids"] + item[key]])
                mask = torch.tensor([[0] * len(item["prompt_ids"]) + [1] * len(item[key])])
                alone.append(sequence_logps(model(input_ids=ids).logits, ids, mask)[0])
    assert torch.equal(counts, pack_counts)
    assert counts.tolist() == [len(i["chosen_ids"]) for i in items] + [len(i["rejected_ids"]) for i in items]
    # Measured: 7.6e-6 (padded) and 3.8e-6 (packed) on sums of ~40 log-probs in fp32.
    assert torch.allclose(by_rows, torch.cat(alone), atol=5e-5)
    assert torch.allclose(by_pack, torch.cat(alone), atol=5e-5)
    real = int((packed["sequence_index"] >= 0).sum())
    assert real == sum(len(i["prompt_ids"]) * 2 + len(i["chosen_ids"]) + len(i["rejected_ids"]) for i in items)
