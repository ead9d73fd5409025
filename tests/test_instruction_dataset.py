"""ColumnMappedTextInstructionDataset: masking, shifting, EOS supervision and row-level errors."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)

MAPPING = {"context": "instruction", "question": "input", "answer": "response"}


def _ds(tok, path, **kw):
    return ColumnMappedTextInstructionDataset(path_or_dataset_id=path, column_mapping=MAPPING, tokenizer=tok, **kw)


def test_plain_prompt_answer_only_loss_and_eos_supervised(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Add.", "input": "What is 2 plus 3?", "response": "5"}])
    sample = _ds(tiny_tokenizer, path)[0]
    tok = tiny_tokenizer
    prompt = tok("Add. What is 2 plus 3? ")["input_ids"]
    answer = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    full = prompt + answer
    assert sample["input_ids"] == full[:-1]
    assert sample["labels"] == ([-100] * len(prompt) + answer)[1:]
    assert sample["labels"][-1] == tok.eos_token_id == tok.pad_token_id  # EOS carries loss although pad == eos


def test_chat_template_labels_cover_exactly_the_assistant_turn(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "", "input": "What is 2 plus 3?", "response": "5"}])
    sample = _ds(tiny_tokenizer, path, use_hf_chat_template=True)[0]
    ids = sample["input_ids"] + [sample["labels"][-1]]
    supervised = [t for t in sample["labels"] if t != -100]
    text = tiny_tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n5<|im_end|>\n")
    assert tiny_tokenizer.decode(supervised) == "5<|im_end|>\n"


def test_limit_split_slicing_and_full_loss(tmp_path, tiny_tokenizer):
    rows = [{"instruction": "x", "input": f"q{i}", "response": f"a{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert len(_ds(tiny_tokenizer, path, limit_dataset_samples=3)) == 3
    assert len(_ds(tiny_tokenizer, path, split="train[80%:]")) == 2
    full = _ds(tiny_tokenizer, path, answer_only_loss_mask=False)[0]
    assert -100 not in full["labels"]


def test_padding_to_seq_length(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "input": "b", "response": "c"}])
    sample = _ds(tiny_tokenizer, path, seq_length=32, padding="max_length")[0]
    assert len(sample["input_ids"]) == len(sample["labels"]) == 32


@pytest.mark.parametrize(
    "content, kwargs, pattern",
    [
        ('{"instruction": "a", "input": "b", "response": "c"}\n{"instruction": "a", "input": \n', {}, r"d\.jsonl:2: invalid JSON"),
        ('{"instruction": "a", "input": "b", "output": "c"}\n', {}, r"d\.jsonl:1: column 'response' \(column_mapping.answer\) is missing"),
        ('{"instruction": "a", "input": "b", "response": "c"}\n{"instruction": "a", "input": "b", "response": "  "}\n', {}, r"d\.jsonl:2: empty answer"),
        ('{"instruction": "' + "long " * 40 + '", "input": "b", "response": "c"}\n', {"seq_length": 16}, r"d\.jsonl:1: the prompt alone is \d+ tokens"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, tiny_tokenizer, content, kwargs, pattern):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=pattern) as err:
        _ds(tiny_tokenizer, str(path), **kwargs)
    assert "\n" not in str(err.value)


def test_missing_file_and_missing_answer_mapping(tmp_path, tiny_tokenizer):
    with pytest.raises(DatasetError, match="nope.jsonl: data file not found"):
        _ds(tiny_tokenizer, str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetError, match="'answer' is required"):
        ColumnMappedTextInstructionDataset(str(tmp_path / "x.jsonl"), {"question": "q"}, tiny_tokenizer)


def test_chat_template_prompts_cut_from_one_render_equal_the_prompts_rendered(tmp_path, tiny_tokenizer, monkeypatch):
    """A row's prompt (rendered with the generation prompt) is cut from its conversation's render once the template
    has shown to render turn by turn; the items equal those with every prompt rendered, a prompt that holds the
    turn marker included, and the template renders about one conversation a row, not two."""
    from nemo_like.components.datasets.llm.chat_renderer import ChatRenderer
    from nemo_like.components.datasets.llm.turn_split import TurnSplit

    rows = [{"instruction": f"Task {i}.", "input": f"What is {i} plus {i}?" if i % 3 else "",
             "response": f"{'The answer' if i % 2 else 'It'} is {2 * i}."} for i in range(40)]
    rows[7]["input"] = "say <|im_start|>assistant\nthen stop"  # the marker inside a prompt: rendered, not cut
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    rendered = []
    render = ChatRenderer.render
    monkeypatch.setattr(ChatRenderer, "render", lambda self, c, *a, **k: rendered.append(len(c)) or render(self, c, *a, **k))
    split = _ds(tiny_tokenizer, path, use_hf_chat_template=True, cache_dir=str(tmp_path / "split"))
    split_renders = sum(rendered)
    monkeypatch.setattr(TurnSplit, "PROBES", len(rows) + 1)  # never trusted: every prompt rendered
    exact = _ds(tiny_tokenizer, path, use_hf_chat_template=True, cache_dir=str(tmp_path / "exact"))
    assert split.samples == exact.samples and len(split) == len(rows)
    assert split_renders < 1.5 * len(rows) < sum(rendered) - split_renders
    assert split._turns.prompt == "<|im_start|>assistant\n" and split._turns.marker == "<|im_start|>assistant\n"
