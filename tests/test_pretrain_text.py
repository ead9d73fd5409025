"""Pretraining text: EOS-joined blocks, every token a target; streamed = map-style, exact resume, packing, recipe."""

from __future__ import annotations

import json
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import REPO, write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.packed_sequence import PackedSequence
from nemo_like.components.datasets.llm.pretrain_text_dataset import PretrainTextDataset
from nemo_like.components.datasets.llm.pretrain_text_iterable_dataset import PretrainTextIterableDataset
from nemo_like.components.datasets.utils import default_collater
from nemo_like.recipes.llm.run import main

TEXTS = [f"What is {a} plus {b}? The answer is {a + b}." * (1 + a % 3) for a, b in zip(range(12), range(5, 17))]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture()
def corpus(tmp_path) -> str:
    rows = [{"text": t} for t in TEXTS[:5]] + [{"text": ""}] + [{"text": t} for t in TEXTS[5:]]
    return write_jsonl(tmp_path / "text.jsonl", rows)


def _stream(tok) -> list[int]:
    """The reference layout: every document's tokens, each followed by EOS, end to end."""
    return [t for text in TEXTS for t in tok(text)["input_ids"] + [tok.eos_token_id]]


def test_blocks_are_the_eos_joined_stream_shifted_with_every_token_a_target(corpus, tiny_tokenizer):
    size = 16
    stream = _stream(tiny_tokenizer)
    ds = PretrainTextDataset(corpus, tiny_tokenizer, seq_length=size)
    assert len(ds) == (len(stream) - 1) // size  # the shorter tail block is dropped
    for k, sample in enumerate(ds):
        assert sample["input_ids"] == stream[k * size : (k + 1) * size]
        assert sample["labels"] == stream[k * size + 1 : (k + 1) * size + 1]  # every token is a target, once
        assert sample["attention_mask"] == [1] * size
    kept = PretrainTextDataset(corpus, tiny_tokenizer, seq_length=size, drop_remainder=False)
    assert len(kept) == len(ds) + 1 and kept[-1]["labels"] == stream[len(ds) * size + 1 :]
    assert ds.locations[0].endswith("text.jsonl:1") and ds.locations[-1].endswith("text.jsonl:13")


@pytest.mark.parametrize("size", [7, 16, None])
def test_one_streamed_pass_equals_the_map_style_dataset(corpus, tiny_tokenizer, size):
    stream = PretrainTextIterableDataset(corpus, tiny_tokenizer, seq_length=size, repeat_on_exhaustion=False)
    assert list(stream) == PretrainTextDataset(corpus, tiny_tokenizer, seq_length=size).samples
    limited = PretrainTextIterableDataset(corpus, tiny_tokenizer, seq_length=size, limit_dataset_samples=4,
                                          repeat_on_exhaustion=False)
    assert list(limited) == PretrainTextDataset(corpus, tiny_tokenizer, seq_length=size,
                                                limit_dataset_samples=4).samples


def _loader(ds) -> StatefulDataLoader:
    return StatefulDataLoader(ds, batch_size=3, collate_fn=lambda b: default_collater(b, pad_token_id=ds.pad_token_id))


@pytest.mark.parametrize("k", [1, 4, 9])  # 9 batches of 3 cross the end of the first pass (22 blocks)
def test_resume_after_k_batches_gives_the_same_next_batches(corpus, tiny_tokenizer, k):
    loader = _loader(PretrainTextIterableDataset(corpus, tiny_tokenizer, seq_length=7))
    it = iter(loader)
    for _ in range(k):
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(6)]
    resumed = _loader(PretrainTextIterableDataset(corpus, tiny_tokenizer, seq_length=7))
    resumed.load_state_dict(state)
    got = [batch for _, batch in zip(range(6), resumed)]
    assert all(a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a) for a, b in zip(expected, got))
    assert "input_ids" not in json.dumps(state, default=str)  # the state holds positions, not tokens


def test_document_samples_pack_with_every_token_supervised(corpus, tiny_tokenizer):
    docs = PretrainTextDataset(corpus, tiny_tokenizer, seq_length=None)
    assert len(docs) == len(TEXTS)  # the empty row is skipped
    packed = PackedSequence(docs, 64, packing_strategy="sequential")
    real = sum(len(s["labels"]) for s in docs)
    assert packed.stats["label_tokens"] == real  # all tokens of every document are targets
    row = packed[0]
    first = docs[0]
    n = len(first["input_ids"])
    assert row["input_ids"][:n] == first["input_ids"] and row["labels"][:n] == first["labels"]
    assert row["position_ids"][n] == 0  # the next document restarts its positions


def test_bad_rows_are_named(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"body": "no text column"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: column 'text' \(text_column\) is missing"):
        PretrainTextDataset(path, tiny_tokenizer, seq_length=4)
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: column 'text'"):
        list(PretrainTextIterableDataset(path, tiny_tokenizer, seq_length=4, repeat_on_exhaustion=False))
    with pytest.raises(DatasetError, match=r"dataset\.seq_length: expected a positive integer"):
        PretrainTextDataset(path, tiny_tokenizer, seq_length=0)


def test_shipped_corpus_and_recipe_run_shortened_on_a_tiny_model(tmp_path, tiny_model_dir, tiny_tokenizer):
    train = REPO / "data" / "text" / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(rows) == 400 and all(r["text"].strip() for r in rows)
    ckpt = tmp_path / "ckpt"
    args = ["--config", str(REPO / "recipes" / "smollm2_135m" / "pretrain_text.yaml"),
            "--model.pretrained_model_name_or_path", tiny_model_dir,
            "--dataset.path_or_dataset_id", str(train), "--dataset.limit_dataset_samples", "3",
            "--dataset.seq_length", "64", "--validation_dataset.seq_length", "64",
            "--validation_dataset.path_or_dataset_id", str(REPO / "data" / "text" / "validation.jsonl"),
            "--validation_dataset.limit_dataset_samples", "2",
            "--step_scheduler.max_steps", "6", "--step_scheduler.val_every_steps", "3",
            "--step_scheduler.ckpt_every_steps", "100", "--step_scheduler.local_batch_size", "2",
            "--optimizer.lr", "1e-3", "--autocast.enabled", "false", "--checkpoint.checkpoint_dir", str(ckpt)]
    assert main(args) == 0
    records = [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(6))
    # The streamed pass is one epoch: its blocks in micro-batches of 2, four micro-batches a step, the last shorter.
    blocks = len(PretrainTextDataset(str(train), tiny_tokenizer, seq_length=64, limit_dataset_samples=3))
    per_step = [min(8, blocks - i) for i in range(0, blocks, 8)]
    expected = [(epoch, n * 64) for epoch in range(6) for n in per_step][:6]
    assert [(r["epoch"], r["num_label_tokens"]) for r in records] == expected
    val = [json.loads(line) for line in (ckpt / "validation.jsonl").read_text().splitlines()]
    epoch_ends = {i for i in range(6) if i == 5 or expected[i + 1][0] != expected[i][0]}
    assert [v["step"] for v in val] == sorted(epoch_ends | {2, 5})  # every 3 steps, and at each checkpoint
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert (ckpt / "LATEST").read_text().strip() == f"epoch_{expected[-1][0]}_step_5"
