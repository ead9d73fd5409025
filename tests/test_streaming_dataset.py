"""Streaming instruction data: same samples as the map-style dataset, exact resume, limits and repeats."""

from __future__ import annotations

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import addition_rows, write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.column_mapped_text_instruction_iterable_dataset import (
    ColumnMappedTextInstructionIterableDataset,
)
from nemo_like.components.datasets.utils import default_collater

MAPPING = {"context": "instruction", "question": "input", "answer": "response"}


@pytest.fixture()
def data(tmp_path) -> str:
    return write_jsonl(tmp_path / "train.jsonl", addition_rows(11))


def _stream(tok, path, **kw) -> ColumnMappedTextInstructionIterableDataset:
    return ColumnMappedTextInstructionIterableDataset(path, MAPPING, tok, **kw)


def _loader(ds) -> StatefulDataLoader:
    return StatefulDataLoader(ds, batch_size=3, collate_fn=lambda b: default_collater(b, pad_token_id=ds.pad_token_id))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_pass_equals_the_map_style_dataset(data, tiny_tokenizer):
    stream = list(_stream(tiny_tokenizer, data, repeat_on_exhaustion=False))
    assert stream == ColumnMappedTextInstructionDataset(data, MAPPING, tiny_tokenizer).samples
    assert len(list(_stream(tiny_tokenizer, data, repeat_on_exhaustion=False, limit_dataset_samples=4))) == 4


@pytest.mark.parametrize("k", [1, 3, 5])  # 5 batches of 3 cross the end of the 11-row pass
def test_resume_after_k_batches_gives_the_same_next_batches(data, tiny_tokenizer, k):
    loader = _loader(_stream(tiny_tokenizer, data))
    it = iter(loader)
    for _ in range(k):
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(4)]

    resumed = _loader(_stream(tiny_tokenizer, data))
    resumed.load_state_dict(state)
    got = list(zip(range(4), resumed))
    assert all(_same(a, b) for a, (_, b) in zip(expected, got))


def test_repeat_and_limit_per_pass(data, tiny_tokenizer):
    ds = _stream(tiny_tokenizer, data, limit_dataset_samples=4)
    first = ColumnMappedTextInstructionDataset(data, MAPPING, tiny_tokenizer).samples[:4]
    it = iter(ds)
    assert [next(it) for _ in range(10)] == first + first + first[:2]
    assert ds.state_dict()["pass"] == 2 and ds.state_dict()["yielded"] == 2


def test_bad_row_is_named_when_reached(tmp_path, tiny_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "input": "b", "response": "c"}\n{"instruction": \n', encoding="utf-8")
    it = iter(_stream(tiny_tokenizer, str(path)))
    next(it)
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: invalid JSON"):
        next(it)
    with pytest.raises(DatasetError, match="slicing needs the whole file"):
        _stream(tiny_tokenizer, str(path), split="train[:10%]")
