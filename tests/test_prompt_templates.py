"""Prompt/completion formatting: templates and functions from a row, loss on the completion only, clear errors."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.column_mapped_text_instruction_iterable_dataset import (
    ColumnMappedTextInstructionIterableDataset,
)
from nemo_like.components.datasets.llm.prompt_functions import alpaca_prompt
from nemo_like.config.loader import ConfigNode
from nemo_like.recipes.builders.data import instantiate_dataset, resolve_row_functions

ALPACA = "nemo_like.components.datasets.llm.prompt_functions.alpaca_prompt"
ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a primary colour.", "input": "", "output": "Red"},
    {"instruction": "Say hi.", "output": "Hi"},  # no input column at all
]


def _resolved(**kwargs):
    """The dataset's arguments with their prompt/completion function paths resolved, as the recipe's builder does."""
    return {**kwargs, **resolve_row_functions(kwargs)}


@pytest.fixture()
def alpaca_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "alpaca.jsonl", ROWS)


def _expected(tok, prompt: str, completion: str) -> dict[str, list[int]]:
    """The reference sample: prompt tokens unsupervised, completion + EOS supervised, shifted by one."""
    prompt_ids = tok(prompt)["input_ids"]
    completion_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = prompt_ids + completion_ids
    labels = [-100] * len(prompt_ids) + completion_ids
    return {"input_ids": ids[:-1], "labels": labels[1:], "attention_mask": [1] * (len(ids) - 1)}


def test_alpaca_prompt_function_has_both_forms():
    with_input = alpaca_prompt(ROWS[0])
    assert "### Input:\n2 and 3\n\n### Response:\n" in with_input and "paired with an input" in with_input
    for row in ROWS[1:]:
        text = alpaca_prompt(row)
        assert "### Input:" not in text and text.endswith(f"### Instruction:\n{row['instruction']}\n\n### Response:\n")


def test_prompt_func_and_completion_template_give_the_reference_samples(alpaca_file, tiny_tokenizer):
    ds = ColumnMappedTextInstructionDataset(alpaca_file, tokenizer=tiny_tokenizer,
                                            **_resolved(prompt_func=ALPACA, completion_template="{output}"))
    assert len(ds) == 3
    for row, sample in zip(ROWS, ds):
        assert sample == _expected(tiny_tokenizer, alpaca_prompt(row), row["output"])
        supervised = [t for t in sample["labels"] if t != -100]
        assert tiny_tokenizer.decode(supervised) == row["output"] + tiny_tokenizer.eos_token  # completion only


def test_templates_quoted_fields_and_completion_func_from_a_file(tmp_path, tiny_tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "sum.jsonl", [{"dialogue": "A: hi\nB: hello", "summary": "They greet."}])
    template = "Summarize the following conversation:\n\n{'dialogue'}\n\nSummary:\n"  # quoted, as configs write it
    funcs = tmp_path / "funcs.py"
    funcs.write_text("def shout(row):\n    return row['summary'].upper()\n")
    with pytest.raises(DatasetError, match=r"dataset\.completion_func: refusing file target .*NEMO_LIKE_ENABLE_USER"):
        ColumnMappedTextInstructionDataset(path, tokenizer=tiny_tokenizer,
                                           **_resolved(prompt_template=template, completion_func=f"{funcs}:shout"))
    monkeypatch.setenv("NEMO_LIKE_ENABLE_USER_MODULES", "1")
    ds = ColumnMappedTextInstructionDataset(path, tokenizer=tiny_tokenizer,
                                            **_resolved(prompt_template=template, completion_func=f"{funcs}:shout"))
    prompt = "Summarize the following conversation:\n\nA: hi\nB: hello\n\nSummary:\n"
    assert ds[0] == _expected(tiny_tokenizer, prompt, "THEY GREET.")


def test_templates_with_the_chat_template_supervise_the_assistant_turn(alpaca_file, tiny_tokenizer):
    ds = ColumnMappedTextInstructionDataset(alpaca_file, tokenizer=tiny_tokenizer, use_hf_chat_template=True,
                                            prompt_template="{instruction} {input}", completion_template="{output}",
                                            limit_dataset_samples=1)
    sample = ds[0]
    ids = sample["input_ids"] + [sample["labels"][-1]]
    assert tiny_tokenizer.decode(ids).endswith(
        "<|im_start|>user\nAdd the numbers. 2 and 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n")
    assert tiny_tokenizer.decode([t for t in sample["labels"] if t != -100]) == "5<|im_end|>\n"


def test_streaming_variant_gives_the_same_samples(alpaca_file, tiny_tokenizer):
    kw = _resolved(tokenizer=tiny_tokenizer, prompt_func=ALPACA, completion_template="{output}")
    stream = ColumnMappedTextInstructionIterableDataset(alpaca_file, repeat_on_exhaustion=False, **kw)
    assert list(stream) == ColumnMappedTextInstructionDataset(alpaca_file, **kw).samples


def test_built_from_yaml_as_a_dataset_section(alpaca_file, tiny_tokenizer):
    node = ConfigNode({
        "_target_": "nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset."
                    "ColumnMappedTextInstructionDataset",
        "path_or_dataset_id": alpaca_file, "prompt_func": ALPACA, "completion_template": "{output}",
    }, path="dataset")
    ds = instantiate_dataset(node, tokenizer=tiny_tokenizer)
    assert ds[1] == _expected(tiny_tokenizer, alpaca_prompt(ROWS[1]), "Red")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"prompt_template": "{instruction}", "prompt_func": ALPACA, "completion_template": "{output}"},
         r"^dataset\.prompt_template and dataset\.prompt_func: set only one"),
        ({"completion_template": "{output}", "completion_func": ALPACA},
         r"^dataset\.completion_template and dataset\.completion_func: set only one"),
        ({"prompt_template": "{instruction} {context}", "completion_template": "{output}"},
         r"alpaca\.jsonl:1: dataset\.prompt_template names column 'context', which the row lacks"),
        ({"prompt_func": ALPACA, "completion_template": "{answer}"},
         r"alpaca\.jsonl:1: dataset\.completion_template names column 'answer'"),
        ({"prompt_template": "{instruction", "completion_template": "{output}"},
         r"^dataset\.prompt_template: not a valid format template"),
        ({"prompt_func": "nemo_like.components.datasets.llm.prompt_functions.alpaca_promt",
          "completion_template": "{output}"}, r"dataset\.prompt_func: .*did you mean .*alpaca_prompt"),
        ({"prompt_func": ALPACA}, r"column_mapping: 'answer' is required \(or give completion_template"),
    ],
    ids=["both-prompt", "both-completion", "missing-column", "missing-completion-column", "bad-template",
         "misspelled-func", "no-completion"],
)
def test_bad_settings_are_one_line_errors_naming_the_keys(alpaca_file, tiny_tokenizer, kwargs, pattern):
    with pytest.raises(DatasetError, match=pattern) as err:
        ColumnMappedTextInstructionDataset(alpaca_file, tokenizer=tiny_tokenizer, **_resolved(**kwargs))
    assert "\n" not in str(err.value)
