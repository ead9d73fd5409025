"""Arrow-backed datasets: the same items as before, a cache keyed by everything that decides the tokens, rows
named in errors from inside the parallel map, and one build shared by several ranks."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from nemo_like.components.datasets.json_rows import DatasetError, read_json_rows
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.pretrain_text_dataset import PretrainTextDataset
from nemo_like.components.datasets.llm.xlam import XLAMDataset

DATA = Path(__file__).resolve().parents[1] / "data"
QM = {"question": "question", "answer": "answer"}
# Digests of every item and location (data folder written as DATA) made by the datasets as they were before
# they were Arrow-backed (the per-row Python-list implementation), with the tiny test tokenizer.
BEFORE = {
    "quickstart_plain": "2300:5891d387bd0fc12882f66268f572c139",
    "quickstart_chat_template": "2300:d2e9fe92cb7b28ad3f13ccdc7a715c64",
    "quickstart_padded": "100:8677a432bf82302eae7acad7f83e7b5f",
    "chat": "400:e932aaa162ed0a2aa0baa2071917704f",
    "chat_mask_history": "50:99fffe3cd066a6041d28bc323eeec693",
    "xlam": "240:6bfd405d4f8d3914b06515048a30b889",
    "text_blocks": "2020:d302a1b3701f9ffb6e206be2170708e1",
    "text_documents": "400:d987c5392102d1445c26191e64811bc8",
}
# The same with the SmolLM2 tokenizer and chat template, for the recipes' own data forms.
BEFORE_SMOLLM2 = {
    "quickstart_chat_template": "2300:a3e89eea0496d9dd85e0b4d360a19ec3",
    "chat": "400:a4ba27b062c9db4946daf8bb9e7eb4f4",
    "xlam": "240:592f94da720cfa5340209f342889fbff",
    "text_blocks": "594:a38451ac48d499f72522ff1eadaabe20",
}


def _make(case: str, tok, **kw):
    return {
        "quickstart_plain": lambda: ColumnMappedTextInstructionDataset(
            f"{DATA}/quickstart/train.jsonl", QM, tok, max_length=0, **kw),
        "quickstart_chat_template": lambda: ColumnMappedTextInstructionDataset(
            f"{DATA}/quickstart/train.jsonl", QM, tok, use_hf_chat_template=True, max_length=0, **kw),
        "quickstart_padded": lambda: ColumnMappedTextInstructionDataset(
            f"{DATA}/quickstart/validation.jsonl", QM, tok, seq_length=512, padding="max_length", truncation=True,
            max_length=0, limit_dataset_samples=100, **kw),
        "chat": lambda: ChatDataset(f"{DATA}/chat/train.jsonl", tok, max_length=0, **kw),
        "chat_mask_history": lambda: ChatDataset(f"{DATA}/chat/validation.jsonl", tok, mask_history=True,
                                                 max_length=0, **kw),
        "xlam": lambda: XLAMDataset(f"{DATA}/xlam/train.json", tok, max_length=0, **kw),
        "text_blocks": lambda: PretrainTextDataset(f"{DATA}/text/train.jsonl", tok, seq_length=64, max_length=0, **kw),
        "text_documents": lambda: PretrainTextDataset(f"{DATA}/text/train.jsonl", tok, seq_length=None,
                                                      max_length=0, **kw),
    }[case]()


def _digest(ds) -> str:
    h = hashlib.sha256()
    for i in range(len(ds)):
        h.update(json.dumps(ds[i], sort_keys=True).encode())
    h.update(json.dumps([ds.locations[i].replace(str(DATA), "DATA") for i in range(len(ds))]).encode())
    return f"{len(ds)}:{h.hexdigest()[:32]}"


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_items_are_token_for_token_those_of_the_list_datasets(case, tiny_tokenizer, tmp_path):
    assert _digest(_make(case, tiny_tokenizer, cache_dir=str(tmp_path))) == BEFORE[case]


def test_items_with_the_smollm2_tokenizer_are_those_of_the_list_datasets(tmp_path):
    from nemo_like._transformers.tokenizer import build_tokenizer

    tok = build_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert {case: _digest(_make(case, tok, cache_dir=str(tmp_path))) for case in BEFORE_SMOLLM2} == BEFORE_SMOLLM2


@pytest.mark.parametrize("case", ["quickstart_chat_template", "chat", "xlam", "text_documents"])
def test_batched_tokenization_equals_row_by_row(case, tiny_tokenizer, tmp_path):
    ds = _make(case, tiny_tokenizer, cache_dir=str(tmp_path))
    path = {"quickstart_chat_template": "quickstart/train.jsonl", "chat": "chat/train.jsonl",
            "xlam": "xlam/train.json", "text_documents": "text/train.jsonl"}[case]
    one_by_one = [s for s in (ds._tokenize(w, r) for w, r in read_json_rows(f"{DATA}/{path}")) if s is not None]
    assert ds.samples == one_by_one and len(ds.lengths) == len(ds)
    assert [int(n) for n in ds.lengths] == [len(s["input_ids"]) for s in one_by_one]


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_second_run_maps_the_cache_and_every_input_of_the_tokens_changes_the_key(tiny_tokenizer, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nemo_like")
    cache = tmp_path / "cache"
    data = tmp_path / "chat.jsonl"
    data.write_text((DATA / "chat/validation.jsonl").read_text())
    first = ChatDataset(str(data), tiny_tokenizer, max_length=0, cache_dir=str(cache))
    assert "tokenized 50 rows into 50 samples" in caplog.text and len(_entries(cache)) == 1
    caplog.clear()
    again = ChatDataset(str(data), tiny_tokenizer, max_length=0, cache_dir=str(cache))
    assert "from the token cache" in caplog.text and "tokenized" not in caplog.text
    assert again.samples == first.samples and again.table.directory == first.table.directory

    other_template = tiny_tokenizer.chat_template.replace("<|im_end|>\n", "<|im_end|>\n\n")
    changes = {
        "chat_template argument": dict(chat_template=other_template),
        "mask_history": dict(mask_history=True),
        "seq_length limit": dict(seq_length=200, truncation=True),
        "row limit": dict(limit_dataset_samples=20),
    }
    seen = {first.table.directory}
    for what, kw in changes.items():
        ds = ChatDataset(str(data), tiny_tokenizer, **{"max_length": 0, "cache_dir": str(cache), **kw})
        assert ds.table.directory not in seen, what
        seen.add(ds.table.directory)
    # The tokenizer's own chat template, and its vocabulary, are part of the key too.
    changed = type(tiny_tokenizer).from_pretrained(_saved(tiny_tokenizer, tmp_path / "tok"))
    changed.chat_template = other_template
    assert ChatDataset(str(data), changed, max_length=0, cache_dir=str(cache)).table.directory not in seen
    seen.add(ChatDataset(str(data), changed, max_length=0, cache_dir=str(cache)).table.directory)
    changed.add_tokens(["<tool>"])
    assert ChatDataset(str(data), changed, max_length=0, cache_dir=str(cache)).table.directory not in seen
    # The data file's content, not its name or time: one changed row is a new entry with the new tokens.
    rows = data.read_text().splitlines()
    row = json.loads(rows[0])
    row["messages"][-1]["content"] = "a different answer"
    data.write_text("\n".join([json.dumps(row), *rows[1:]]) + "\n")
    edited = ChatDataset(str(data), tiny_tokenizer, max_length=0, cache_dir=str(cache))
    assert edited.table.directory not in seen and edited[0] != first[0] and edited[1] == first[1]


def _saved(tokenizer, path: Path) -> str:
    tokenizer.save_pretrained(path)
    return str(path)


def _instruction_rows(path: Path, n: int, bad_line: int | None = None, bad: str = "json") -> None:
    with path.open("w") as f:
        for i in range(1, n + 1):
            if i == bad_line:
                f.write('{"question": "What is 1 plus 1?", "answer": \n' if bad == "json"
                        else json.dumps({"question": "What is 1 plus 1?", "answer": "  "}) + "\n")
            else:
                f.write(json.dumps({"question": f"What is {i % 30} plus 2?", "answer": f"{i % 30 + 2}"}) + "\n")


@pytest.mark.parametrize("bad", ["json", "empty answer"])
def test_a_bad_row_deep_in_the_file_is_named_from_inside_the_parallel_map(bad, tiny_tokenizer, tmp_path):
    data = tmp_path / "rows.jsonl"
    _instruction_rows(data, 6000, bad_line=5321, bad=bad)
    with pytest.raises(DatasetError) as err:
        ColumnMappedTextInstructionDataset(str(data), QM, tiny_tokenizer, max_length=0, num_proc=2,
                                           cache_dir=str(tmp_path / "cache"))
    assert str(err.value).startswith(f"{data}:5321: ")
    assert ("invalid JSON" if bad == "json" else "empty answer") in str(err.value)
    assert not _entries(tmp_path / "cache")  # nothing half-built is left as a cache entry


CALLS = {"n": 0}


def counting_prompt(row: dict) -> str:
    CALLS["n"] += 1
    return f"Q: {row['question']}\n"


def test_an_error_in_the_first_rows_stops_before_the_rest_is_tokenized(tiny_tokenizer, tmp_path):
    data = tmp_path / "rows.jsonl"
    _instruction_rows(data, 6000, bad_line=7, bad="empty answer")
    CALLS["n"] = 0
    with pytest.raises(DatasetError, match=f"{data}:7: empty answer"):
        ColumnMappedTextInstructionDataset(str(data), QM, tiny_tokenizer, max_length=0, num_proc=2,
                                           prompt_func=counting_prompt, cache_dir=str(tmp_path / "cache"))
    assert 0 < CALLS["n"] < 10  # the rows before the bad one, in this process; no worker was started


def _rank_builds(args: tuple[int, str, str]) -> tuple[int, int, str]:
    rank, data, cache = args
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tiny_tokenizer

    os.environ["RANK"] = str(rank)
    ds = ColumnMappedTextInstructionDataset(data, QM, build_tiny_tokenizer(), max_length=0, num_proc=2,
                                            cache_dir=cache)
    return rank, ds.table.manifest["built"]["pid"], _digest(ds)


def test_two_ranks_share_one_cache_build(tmp_path):
    data = tmp_path / "rows.jsonl"
    _instruction_rows(data, 5000)
    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_rank_builds, [(0, str(data), str(cache)), (1, str(data), str(cache))])
    (_, pid0, digest0), (_, pid1, digest1) = results
    assert pid0 == pid1 and digest0 == digest1  # one process built it; both read the same samples
    assert len(_entries(cache)) == 1
    manifest = json.loads(next(cache.glob("*/manifest.json")).read_text())
    assert manifest["rows"] == manifest["samples"] == 5000 and manifest["built"]["processes"] == 2


def test_parquet_and_csv_rows_are_read_by_datasets_and_named_by_index(tiny_tokenizer, tmp_path):
    import datasets

    rows = [json.loads(line) for line in (DATA / "quickstart/validation.jsonl").read_text().splitlines()[:30]]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(tmp_path / "rows.parquet")
    table.to_csv(tmp_path / "rows.csv", index=False)
    reference = ColumnMappedTextInstructionDataset(f"{DATA}/quickstart/validation.jsonl", QM, tiny_tokenizer,
                                                   max_length=0, limit_dataset_samples=30)
    for name in ("rows.parquet", "rows.csv"):
        ds = ColumnMappedTextInstructionDataset(str(tmp_path / name), QM, tiny_tokenizer, max_length=0)
        assert ds.samples == reference.samples and ds.locations[3] == f"{tmp_path / name}[3]"
        # A sliced split keeps each row's place in the file (its name, and the row an error names).
        tail = ColumnMappedTextInstructionDataset(str(tmp_path / name), QM, tiny_tokenizer, max_length=0,
                                                  split="train[10:]")
        assert tail.samples == reference.samples[10:] and tail.locations[3] == f"{tmp_path / name}[13]"


def test_packing_and_length_grouping_read_the_table_arrays_and_match_the_rows(tiny_tokenizer, tmp_path):
    from nemo_like.components.datasets.length_grouped_sampler import LengthGroupedSampler, sample_lengths
    from nemo_like.components.datasets.llm.packed_sequence import PackedSequence

    ds = _make("quickstart_padded", tiny_tokenizer, cache_dir=str(tmp_path))  # padded items, unpadded table
    rows = [ds[i] for i in range(len(ds))]  # a plain list: read item by item
    for strategy in ("max_fill", "best_fit", "sequential"):
        from_table = PackedSequence(ds, 1024, packing_strategy=strategy)
        from_rows = PackedSequence(rows, 1024, packing_strategy=strategy, pad_token_id=ds.pad_token_id)
        assert from_table.stats == from_rows.stats
        assert [from_table[i] for i in range(len(from_table))] == [from_rows[i] for i in range(len(from_rows))]
    longest = int(ds.lengths.max())
    first = ds.locations[int(ds.lengths.argmax())]
    with pytest.raises(DatasetError, match=f"{first}: {longest} tokens exceed packed_sequence_size {longest - 1}"):
        PackedSequence(ds, longest - 1)
    size = int(sorted(ds.lengths)[-5])  # a few rows longer than a pack
    skipped = PackedSequence(ds, size, skip_long_samples=True)
    assert skipped.stats == PackedSequence(rows, size, skip_long_samples=True, pad_token_id=ds.pad_token_id).stats
    assert skipped.stats["skipped_too_long"] > 0
    assert list(sample_lengths(ds)) == [sum(r["attention_mask"]) for r in rows]
    sampler = LengthGroupedSampler(sample_lengths(ds), batch_size=4, seed=1, mega_batch_mult=5)
    assert sampler.order(0) == LengthGroupedSampler([sum(r["attention_mask"]) for r in rows], 4, 1, 5).order(0)


def test_tokenizing_and_packing_show_progress_with_counts(tiny_tokenizer, tmp_path, capfd, caplog, monkeypatch):
    import logging

    import numpy as np

    from nemo_like.components.datasets.llm.pack_planner import PROGRESS_FROM, plan_packs
    from nemo_like.components.loggers.phase_progress import EVERY_ENV

    monkeypatch.setenv(EVERY_ENV, "0")  # a line for every piece of work (a log file: stderr is not a terminal here)
    caplog.set_level(logging.INFO, logger="nemo_like")
    data = tmp_path / "rows.jsonl"
    _instruction_rows(data, 300)
    ColumnMappedTextInstructionDataset(str(data), QM, tiny_tokenizer, max_length=0, cache_dir=str(tmp_path / "c"))
    lengths = np.random.default_rng(0).integers(8, 300, PROGRESS_FROM)
    plan_packs(lengths, 1024, "best_fit")
    lines = [r.getMessage() for r in caplog.records]
    assert any(ln.startswith("tokenizing rows.jsonl: 300/300 rows (100%), ") for ln in lines), lines
    assert any(ln.startswith(f"packing (best_fit): {PROGRESS_FROM}/{PROGRESS_FROM} documents (100%)") for ln in lines)
    assert "\r" not in capfd.readouterr().err  # no bar with carriage returns in a file


def test_a_packing_plan_is_kept_with_the_token_table_and_read_back(tiny_tokenizer, tmp_path, monkeypatch):
    from nemo_like.components.datasets.llm import packed_sequence
    from nemo_like.components.datasets.llm.packed_sequence import PackedSequence

    ds = _make("chat", tiny_tokenizer, cache_dir=str(tmp_path))
    first = PackedSequence(ds, 512)
    assert list(ds.table.directory.glob("derived-packs-512-max_fill-*.npz"))

    def no_planning(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(packed_sequence, "plan_packs", no_planning)
    again = PackedSequence(_make("chat", tiny_tokenizer, cache_dir=str(tmp_path)), 512)
    assert again.stats == first.stats and [again[i] for i in range(len(again))] == [first[i] for i in range(len(first))]
    with pytest.raises(AssertionError, match="planned again"):  # other options are another plan
        PackedSequence(ds, 512, packing_strategy="best_fit")


def test_a_broken_or_tampered_cache_entry_is_built_again(tiny_tokenizer, tmp_path, caplog):
    ds = _make("chat_mask_history", tiny_tokenizer, cache_dir=str(tmp_path))
    expected = ds.samples[:]
    manifest = ds.table.directory / "manifest.json"
    tampered = json.loads(manifest.read_text())
    tampered["files"] = ["../../../../etc/hostname"]
    manifest.write_text(json.dumps(tampered))
    again = _make("chat_mask_history", tiny_tokenizer, cache_dir=str(tmp_path))
    assert "unreadable" in caplog.text and "outside its entry" in caplog.text and again.samples == expected
    next(again.table.directory.glob("*.arrow")).write_bytes(b"not arrow")  # a truncated or garbled file
    assert _make("chat_mask_history", tiny_tokenizer, cache_dir=str(tmp_path)).samples == expected


def test_a_parquet_file_that_is_not_parquet_is_one_line_naming_it(tiny_tokenizer, tmp_path):
    bad = tmp_path / "rows.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file at all")
    with pytest.raises(DatasetError, match=rf"^{bad}: cannot read this Parquet file \(\w+"):
        ColumnMappedTextInstructionDataset(str(bad), QM, tiny_tokenizer, max_length=0, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match="missing.parquet: data file not found"):
        ColumnMappedTextInstructionDataset("missing.parquet", QM, tiny_tokenizer, max_length=0)


def test_samples_given_as_tokens_and_label_spans_make_the_columns_their_label_lists_make():
    """The array-built columns (``tokens`` / ``label_spans`` samples) equal the ones built from each sample's lists:
    spans at either end, adjacent spans, several per row, none, one-token rows."""
    import random

    import numpy as np

    from nemo_like.components.datasets.token_table import _int32_lists, _shifted_columns, shifted_lists

    rng = random.Random(0)
    samples = []
    for _ in range(300):
        n = rng.choice([1, 2, 3, rng.randint(4, 60)])
        bounds = sorted(rng.sample(range(n), min(n - 1, rng.randint(0, 6)))) if n > 1 else []
        spans = [x for a, b in zip(bounds[::2], bounds[1::2]) for x in (a, b)]
        tokens = [rng.randrange(50) for _ in range(n)]
        samples.append({"tokens": tokens, "label_spans": spans, "supervised": 0})
    samples.append({"tokens": [5, 6, 7, 8], "label_spans": [0, 1, 1, 3], "supervised": 3})  # adjacent spans
    ids, labels = _shifted_columns(samples)
    lists = [shifted_lists(s) for s in samples]
    assert ids.equals(_int32_lists([i for i, _ in lists])) and labels.equals(_int32_lists([x for _, x in lists]))
    assert lists[-1] == ([5, 6, 7], [6, 7, 8])
    assert np.array_equal(labels.flatten().to_numpy() != -100,
                          np.concatenate([np.array(x, dtype=np.int64) != -100 for _, x in lists]))
