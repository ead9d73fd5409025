"""Every dataset class reports bad data in one line naming the file and the line (JSONL) or row (JSON array),
and holds rows to the model's context: an error naming the row, or a cut counted in one log line."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import GPT2Config, LlamaConfig

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.chat_dataset import ChatDataset
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.column_mapped_text_instruction_iterable_dataset import (
    ColumnMappedTextInstructionIterableDataset,
)
from nemo_like.components.datasets.llm.context_limit import context_length_of
from nemo_like.components.datasets.llm.pretrain_text_dataset import PretrainTextDataset
from nemo_like.components.datasets.llm.pretrain_text_iterable_dataset import PretrainTextIterableDataset
from nemo_like.components.datasets.llm.xlam import make_xlam_dataset
from nemo_like.config.loader import ConfigError, ConfigNode
from nemo_like.recipes.builders.data import build_dataset as build_dataset_section
from nemo_like.recipes.builders.data import instantiate_dataset

MIXTURE = "nemo_like.components.datasets.mixture.make_dataset_mixture"
CHAT = "nemo_like.components.datasets.llm.chat_dataset.ChatDataset"
INSTRUCTION = ("nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset."
               "ColumnMappedTextInstructionDataset")
TOOLS = json.dumps([{"name": "add", "description": "Add.", "parameters": {"a": {"type": "int"}, "b": {"type": "int"}}}])


def _chat_row(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"What is {i} plus 2?"},
                         {"role": "assistant", "content": f"The answer is {i + 2}."}]}


GOOD: dict[str, Callable[[int], dict[str, Any]]] = {
    "instruction": lambda i: {"q": f"What is {i} plus 1?", "a": f"The answer is {i + 1}."},
    "chat": _chat_row,
    "xlam": lambda i: {"query": f"Add {i} and 2.", "tools": TOOLS,
                       "answers": json.dumps([{"name": "add", "arguments": {"a": i, "b": 2}}])},
    "pretrain": lambda i: {"text": f"What is {i} plus 3? The answer is {i + 3}."},
}
GOOD["streaming instruction"] = GOOD["instruction"]
GOOD["pretrain iterable"] = GOOD["pretrain"]
GOOD["mixture"] = GOOD["instruction"]  # the mixture's second member reads the file under test


def _build(kind: str, path: str, tok: Any, **kwargs: Any) -> Any:
    """The dataset of ``kind`` over ``path``, read through (streams are iterated once)."""
    mapping = {"question": "q", "answer": "a"}
    if kind == "instruction":
        return ColumnMappedTextInstructionDataset(path, mapping, tok, **kwargs)
    if kind == "streaming instruction":
        ds = ColumnMappedTextInstructionIterableDataset(path, mapping, tok, repeat_on_exhaustion=False, **kwargs)
        return list(ds)
    if kind == "chat":
        return ChatDataset(path, tok, **kwargs)
    if kind == "xlam":
        return make_xlam_dataset(tok, path_or_dataset_id=path, **kwargs)
    if kind == "pretrain":
        return PretrainTextDataset(path, tok, seq_length=None, **kwargs)
    if kind == "pretrain iterable":
        return list(PretrainTextIterableDataset(path, tok, seq_length=None, repeat_on_exhaustion=False, **kwargs))
    good = Path(path).parent / "good_chat.jsonl"
    good.write_text("".join(json.dumps(_chat_row(i)) + "\n" for i in range(3)), encoding="utf-8")
    section = {"_target_": MIXTURE, "datasets": [
        {"_target_": CHAT, "path_or_dataset_id": str(good)},
        {"_target_": INSTRUCTION, "path_or_dataset_id": path, "column_mapping": mapping, **kwargs},
    ]}
    return instantiate_dataset(ConfigNode(section, path="dataset"), tokenizer=tok)


KINDS = list(GOOD)


def _lines(kind: str, n: int = 2) -> bytes:
    return b"".join(json.dumps(GOOD[kind](i)).encode() + b"\n" for i in range(n))


def _raises(kind: str, path: str, tok: Any, pattern: str, **kwargs: Any) -> str:
    """The one-line message of the error building ``kind`` over ``path`` gives; it must match ``pattern``."""
    # A mixture's member is built through its YAML section, whose builder prefixes the section path.
    with pytest.raises(DatasetError if kind != "mixture" else ValueError) as err:
        _build(kind, path, tok, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), message
    return message


# ---------------------------------------------------------------------- files that are not JSON text
@pytest.mark.parametrize("kind", KINDS)
def test_latin1_line_is_not_utf8_at_its_line_and_byte(tmp_path, tiny_tokenizer, kind):
    head = _lines(kind)
    bad = json.dumps(GOOD[kind](7)).replace("7", "caf\u00e9", 1).encode("latin-1") + b"\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(head + bad + _lines(kind, 1))
    offset = len(head) + bad.index(b"\xe9")
    _raises(kind, str(path), tiny_tokenizer,
            rf"{re.escape(str(path))}:3: not UTF-8 \(byte 0xe9 at byte offset {offset}\)")


@pytest.mark.parametrize("kind", KINDS)
def test_binary_and_compressed_files_are_named(tmp_path, tiny_tokenizer, kind):
    binary = tmp_path / "d.jsonl"
    binary.write_bytes(_lines(kind) + b"\x00\x01\x02\xff\xfe\n")
    _raises(kind, str(binary), tiny_tokenizer, rf"{re.escape(str(binary))}:3: binary data \(a NUL byte at byte "
                                              rf"offset {len(_lines(kind))}\)")
    packed = tmp_path / "g.jsonl"
    packed.write_bytes(gzip.compress(_lines(kind)))
    _raises(kind, str(packed), tiny_tokenizer, rf"{re.escape(str(packed))}:1: a gzip-compressed file, not UTF-8")


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_json_names_the_line(tmp_path, tiny_tokenizer, kind):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_lines(kind) + b'{"q": "unterminated\n' + _lines(kind, 1))
    _raises(kind, str(path), tiny_tokenizer, rf"{re.escape(str(path))}:3: invalid JSON \(Unterminated string")


@pytest.mark.parametrize("kind", KINDS)
def test_empty_missing_and_folder_paths(tmp_path, tiny_tokenizer, kind):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    _raises(kind, str(empty), tiny_tokenizer, rf"{re.escape(str(empty))}: empty file")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n")
    _raises(kind, str(blank), tiny_tokenizer, rf"{re.escape(str(blank))}: (empty file|a whole pass produced no)")
    missing = tmp_path / "nope.jsonl"
    _raises(kind, str(missing), tiny_tokenizer, rf"{re.escape(str(missing))}: data file not found")
    folder = tmp_path / "no_data"
    folder.mkdir()
    _raises(kind, str(folder), tiny_tokenizer, rf"{re.escape(str(folder))}: the folder holds no")
    # A folder of data files is a local copy of a split: its files are read, and a bad one is named.
    _raises(kind, str(tmp_path), tiny_tokenizer, rf"{re.escape(str(tmp_path))}/\w+\.jsonl: empty file")


def test_a_mistyped_relative_path_is_a_missing_file_not_a_hub_id(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match=r"^data/trian: data file not found$"):
        ChatDataset("data/trian", tiny_tokenizer)
    with pytest.raises(DatasetError, match=r"^nested/data/train: data file not found$"):
        ChatDataset("nested/data/train", tiny_tokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_json_array_rows_are_named_by_index(tmp_path, tiny_tokenizer, kind):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD[kind](0), GOOD[kind](1), ["not", "an", "object"]]), encoding="utf-8")
    _raises(kind, str(path), tiny_tokenizer, rf"{re.escape(str(path))}\[2\]: expected a JSON object, got list")
    # one object per line (the layout of a JSON array written pretty), the third not UTF-8
    rows = [json.dumps(GOOD[kind](i)).encode() for i in range(3)]
    rows[2] = rows[2].replace(b"2", b"\xe9", 1)
    path.write_bytes(b"[\n" + b",\n".join(rows) + b"\n]\n")
    _raises(kind, str(path), tiny_tokenizer, rf"{re.escape(str(path))}:4: not UTF-8 \(byte 0xe9")
    path.write_text(json.dumps(GOOD[kind](0)) + "\n" + json.dumps(GOOD[kind](1)) + "\n", encoding="utf-8")
    _raises(kind, str(path), tiny_tokenizer, r"d\.json:2: invalid JSON \(Extra data.*name the file \.jsonl")


MISSING = {
    "instruction": r"column 'a' \(column_mapping.answer\) is missing; the row has \['other'\]",
    "chat": r"no 'messages' \(or ShareGPT 'conversations'\); the row has \['other'\]",
    "xlam": r"an xLAM row needs \['query', 'tools', 'answers'\]",
    "pretrain": r"column 'text' \(text_column\) is missing",
}
MISSING.update({"streaming instruction": MISSING["instruction"], "pretrain iterable": MISSING["pretrain"],
                "mixture": MISSING["instruction"]})


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_without_its_mapped_column_names_file_and_line(tmp_path, tiny_tokenizer, kind):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_lines(kind) + b'{"other": 1}\n')
    _raises(kind, str(path), tiny_tokenizer, rf"{re.escape(str(path))}:3: {MISSING[kind]}")


# ---------------------------------------------------------------------- chat messages
USER = {"role": "user", "content": "What is 1 plus 2?"}
ANSWER = {"role": "assistant", "content": "3"}


@pytest.mark.parametrize(
    "messages, pattern",
    [
        ([{"role": "user"}, ANSWER], r"message 0 \(user\): 'content' is missing"),
        ([USER, {"role": "assistant", "content": None}], r"message 1 \(assistant\): 'content' is null"),
        ([{"role": "user", "content": 12}, ANSWER], r"message 0 \(user\): 'content' must be a string .*got int"),
        ([USER, {"role": "assistant", "content": {"text": "3"}}],
         r"message 1 \(assistant\): 'content' must be a string"),
        ([{"content": "hi"}, ANSWER], r"message 0: 'role' is missing; the message has \['content'\]"),
        ([{"role": "User", "content": "hi"}, ANSWER], r"message 0: unknown role 'User'"),
        ([{"role": ["user"], "content": "hi"}, ANSWER], r"message 0: unknown role \['user'\]"),
        (["hi", ANSWER], r"message 0 must be an object with a 'role' and a 'content', got str"),
    ],
    ids=["no-content", "null-content", "int-content", "dict-content", "no-role", "unknown-role", "list-role",
         "not-an-object"],
)
@pytest.mark.parametrize("kind", ["chat", "mixture"])
def test_bad_chat_messages_name_file_line_and_message(tmp_path, tiny_tokenizer, messages, pattern, kind):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(_chat_row(0)) + "\n" + json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    if kind == "mixture":  # the chat file as the mixture's first member
        section = {"_target_": MIXTURE, "datasets": [{"_target_": CHAT, "path_or_dataset_id": str(path)}]}
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: {pattern}"):
            instantiate_dataset(ConfigNode(section, path="dataset"), tokenizer=tiny_tokenizer)
        return
    _raises("chat", str(path), tiny_tokenizer, rf"{re.escape(str(path))}:2: {pattern}")
    assert len(ChatDataset(str(path), tiny_tokenizer, skip_invalid_samples=True)) == 1


def test_sharegpt_turn_without_value_and_tool_call_without_content(tmp_path, tiny_tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}) + "\n")
    _raises("chat", str(path), tiny_tokenizer, r"chat\.jsonl:1: conversations\[0\] needs a 'from' and a 'value'")
    call = {"type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}
    row = {"messages": [USER, {"role": "assistant", "tool_calls": [call]}]}  # OpenAI leaves content out here
    path.write_text(json.dumps(row) + "\n")
    assert len(ChatDataset(str(path), tiny_tokenizer)) == 1


def test_xlam_query_must_be_text(tmp_path, tiny_tokenizer):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({**GOOD["xlam"](0), "query": None}) + "\n")
    _raises("xlam", str(path), tiny_tokenizer, r"x\.jsonl:1: 'query' must be a non-empty string, got None")


# ---------------------------------------------------------------------- rows longer than the model's context
LONG = "one two three four five six seven eight nine ten " * 40  # about 2,000 tokens
LIMIT = {kind: 400 if kind == "xlam" else 32 for kind in KINDS}  # xLAM's short rows hold 357 tokens of tool schema


def _long_rows(kind: str) -> list[dict[str, Any]]:
    """Three rows, the second far longer than 32 tokens."""
    if kind in ("instruction", "streaming instruction", "mixture"):
        return [GOOD[kind](0), {"q": "Say it.", "a": LONG}, GOOD[kind](1)]
    if kind == "chat":
        return [_chat_row(0), {"messages": [USER, {"role": "assistant", "content": LONG}]}, _chat_row(1)]
    if kind == "xlam":
        return [GOOD[kind](0), {**GOOD[kind](1), "query": LONG}, GOOD[kind](2)]
    return [GOOD[kind](0), {"text": LONG}, GOOD[kind](1)]


def _write_long(tmp_path: Path, kind: str) -> str:
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _long_rows(kind)), encoding="utf-8")
    return str(path)


def _inputs(ds: Any) -> list[int]:
    samples = ds if isinstance(ds, list) else [ds[i] for i in range(len(ds))]
    return [sum(s["attention_mask"]) for s in samples]


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_longer_than_the_context_is_an_error_naming_it_and_the_fix(tmp_path, tiny_tokenizer, kind):
    path, limit = _write_long(tmp_path, kind), LIMIT[kind]
    message = _raises(kind, path, tiny_tokenizer, rf"{re.escape(path)}:2: (\d+) tokens exceed the model's context "
                                                  rf"of {limit} tokens \(max_length\); set dataset\.truncation: true",
                      max_length=limit)
    assert int(re.search(r":2: (\d+) tokens", message).group(1)) > 1000
    assert f"dataset.seq_length (at most {limit})" in message
    assert len(_inputs(_build(kind, path, tiny_tokenizer, max_length=0))) >= 3  # 0: no limit


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "xlam"])  # xLAM's long part is the prompt, which stays
def test_truncation_cuts_long_rows_to_the_context_and_logs_the_count_once(tmp_path, tiny_tokenizer, caplog, kind):
    path = _write_long(tmp_path, kind)
    caplog.set_level(logging.INFO, logger="nemo_like")
    ds = _build(kind, path, tiny_tokenizer, max_length=32, truncation=True)
    lengths = _inputs(ds)
    assert max(lengths) == 32 and len(lengths) >= 3
    lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert lines == [f"{path}: truncated 1 of 3 row(s) to 32 tokens (the model's context, max_length)"]


def test_streams_log_their_cuts_once_over_many_passes(tmp_path, tiny_tokenizer, caplog):
    path = _write_long(tmp_path, "pretrain")
    caplog.set_level(logging.INFO, logger="nemo_like")
    stream = PretrainTextIterableDataset(path, tiny_tokenizer, seq_length=None, max_length=32, truncation=True,
                                         repeat_on_exhaustion=False)
    for _ in range(3):
        assert max(_inputs(list(stream))) == 32
    assert sum("truncated 1 of 3 row(s)" in r.getMessage() for r in caplog.records) == 1


def test_xlam_prompt_longer_than_the_context_is_refused_even_with_truncation(tmp_path, tiny_tokenizer):
    path = _write_long(tmp_path, "xlam")
    _raises("xlam", path, tiny_tokenizer, r"long\.jsonl:2: no assistant token is left to learn from after truncation "
                                          r"to the model's context of 400 tokens", max_length=400, truncation=True)
    path = _write_long(tmp_path, "instruction")
    _raises("instruction", path, tiny_tokenizer, r"long\.jsonl:2: (\d+) tokens exceed", max_length=32)
    short = tmp_path / "p.jsonl"
    short.write_text(json.dumps({"q": LONG, "a": "yes"}) + "\n")
    _raises("instruction", str(short), tiny_tokenizer,
            r"p\.jsonl:1: the prompt alone is \d+ tokens, not shorter than the model's context of 32 tokens",
            max_length=32, truncation=True)


def test_the_tokenizers_model_max_length_is_the_limit_when_no_max_length_is_given(tmp_path, tiny_tokenizer):
    path = _write_long(tmp_path, "chat")
    assert len(ChatDataset(path, tiny_tokenizer)) == 3  # model_max_length 1e30: not a limit
    tok = copy.deepcopy(tiny_tokenizer)
    tok.model_max_length = 40
    _raises("chat", path, tok, r"long\.jsonl:2: \d+ tokens exceed the model's context of 40 tokens "
                               r"\(tokenizer\.model_max_length\)")
    assert max(_inputs(ChatDataset(path, tok, max_length=64, truncation=True))) == 64  # given: it wins


def test_seq_length_over_the_context_is_refused_and_under_it_rules(tmp_path, tiny_tokenizer):
    path = _write_long(tmp_path, "pretrain")
    with pytest.raises(DatasetError, match=r"^dataset\.seq_length: 64 exceeds the model's context of 32 tokens "
                                           r"\(max_length\); lower seq_length to at most 32$"):
        PretrainTextDataset(path, tiny_tokenizer, seq_length=64, max_length=32)
    blocks = PretrainTextDataset(path, tiny_tokenizer, seq_length=16, max_length=32)
    assert set(_inputs(blocks)) == {16}
    chat = _write_long(tmp_path, "chat")
    _raises("chat", chat, tiny_tokenizer, r"long\.jsonl:2: \d+ tokens exceed seq_length 30; raise seq_length",
            seq_length=30, max_length=32)
    with pytest.raises(DatasetError, match=r"dataset\.max_length: expected the model's context"):
        ChatDataset(chat, tiny_tokenizer, max_length=-1)


# ---------------------------------------------------------------------- the builder
def _cfg(section: dict[str, Any], packing: dict[str, Any] | None = None) -> ConfigNode:
    data = {"dataset": section}
    if packing is not None:
        data["packed_sequence"] = packing
    return ConfigNode(data)


def build_dataset(cfg: ConfigNode, name: str, tokenizer: Any, max_length: int | None = None) -> Any:
    """The builder over the ``name`` section and the ``packed_sequence`` section of ``cfg``."""
    return build_dataset_section(cfg[name], tokenizer, max_length=max_length, packing=cfg.get("packed_sequence"))


def test_build_dataset_passes_the_context_to_every_dataset_and_yaml_wins(tmp_path, tiny_tokenizer):
    chat = _write_long(tmp_path, "chat")
    section = {"_target_": CHAT, "path_or_dataset_id": chat}
    with pytest.raises(ValueError, match=r"long\.jsonl:2: \d+ tokens exceed the model's context of 32 tokens"):
        build_dataset(_cfg(section), "dataset", tiny_tokenizer, max_length=32)
    assert len(build_dataset(_cfg({**section, "max_length": 4096}), "dataset", tiny_tokenizer, max_length=32)) == 3
    assert len(build_dataset(_cfg(section), "dataset", tiny_tokenizer)) == 3  # no context known: no limit
    mixture = {"_target_": MIXTURE, "datasets": [section, {**section, "mixture_proportion": None}]}
    del mixture["datasets"][1]["mixture_proportion"]
    with pytest.raises(ValueError, match=r"dataset\.datasets\.0: .*long\.jsonl:2: \d+ tokens exceed the model's"):
        build_dataset(_cfg(mixture), "dataset", tiny_tokenizer, max_length=32)


def test_packs_are_held_to_the_context_and_their_rows_to_the_pack(tmp_path, tiny_tokenizer):
    text = _write_long(tmp_path, "pretrain")
    section = {"_target_": "nemo_like.components.datasets.llm.pretrain_text_dataset.PretrainTextDataset",
               "path_or_dataset_id": text, "seq_length": None}
    with pytest.raises(ConfigError, match=r"^packed_sequence\.packed_sequence_size: 64 exceeds the model's context "
                                          r"of 32 tokens \(max_length\); use a packed_sequence_size of at most 32$"):
        build_dataset(_cfg(section, {"packed_sequence_size": 64}), "dataset", tiny_tokenizer, max_length=32)
    tok = copy.deepcopy(tiny_tokenizer)
    tok.model_max_length = 48
    with pytest.raises(ConfigError, match=r"context of 48 tokens \(tokenizer\.model_max_length\)"):
        build_dataset(_cfg(section, {"packed_sequence_size": 64}), "dataset", tok)
    # The long document is split across packs of 32: every pack fits the context.
    packed = build_dataset(_cfg(section, {"packed_sequence_size": 32, "split_across_pack": True}), "dataset",
                           tiny_tokenizer, max_length=32)
    assert {len(p["input_ids"]) for p in packed} == {32} and len(packed) > 10
    with pytest.raises(DatasetError, match=r"long\.jsonl:2: \d+ tokens exceed packed_sequence_size 32"):
        build_dataset(_cfg(section, {"packed_sequence_size": 32}), "dataset", tiny_tokenizer, max_length=32)


def test_context_length_of_model_configs():
    assert context_length_of(LlamaConfig(max_position_embeddings=512)) == 512
    assert context_length_of(GPT2Config(n_positions=128)) == 128
    yarn = LlamaConfig(max_position_embeddings=4096,
                       rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096})
    assert context_length_of(yarn) == 16384
    llama31 = {"max_position_embeddings": 131072,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}
    assert context_length_of(llama31) == 131072
    assert context_length_of({"hidden_size": 8}) is None and context_length_of(None) is None
