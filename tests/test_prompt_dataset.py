"""PromptDataset renders prompts as the chat template does, keeps the reward columns, and names bad rows;
data/grpo is reproducible from its generator and its rows are right."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.prompt_dataset import PromptDataset, collate_prompts

REPO = Path(__file__).resolve().parents[1]
GRPO = REPO / "data" / "grpo"
TASKS = ("arithmetic", "countdown", "letters")
SPLITS = ("train", "validation", "test")


def _write(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _template(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_string_and_message_prompts_render_as_the_chat_template_does(tmp_path, tiny_tokenizer):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                    {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}]
    path = _write(tmp_path / "p.jsonl", [{"prompt": "What is 3 + 5?", "answer": "8", "extra": {"k": [1, 2]}},
                                         "", {"prompt": conversation, "answer": 6}])
    ds = PromptDataset(path, tiny_tokenizer, assistant_prefix="The answer is")
    assert len(ds) == 2 and ds.locations == [f"{path}:1", f"{path}:3"] and ds.location(1) == f"{path}:3"
    expected = [_template(tiny_tokenizer, [{"role": "user", "content": "What is 3 + 5?"}]) + "The answer is",
                _template(tiny_tokenizer, conversation) + "The answer is"]
    assert expected[0] == "<|im_start|>user\nWhat is 3 + 5?<|im_end|>\n<|im_start|>assistant\nThe answer is"
    for i, item in enumerate(ds):
        assert item["prompt"] == expected[i] and item["index"] == i
        assert item["prompt_ids"] == tiny_tokenizer(expected[i], add_special_tokens=False)["input_ids"]
    assert ds[0]["columns"] == {"answer": "8", "extra": {"k": [1, 2]}} and ds[1]["columns"] == {"answer": 6}
    assert ds[-1]["index"] == 1 and ds.lengths == [len(ds[0]["prompt_ids"]), len(ds[1]["prompt_ids"])]
    with pytest.raises(IndexError):
        ds[2]

    with_system = PromptDataset(path, tiny_tokenizer, system_prompt="Answer with a number.")
    assert with_system[0]["prompt"] == _template(tiny_tokenizer, [
        {"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 3 + 5?"}])
    assert with_system[1]["prompt"] == _template(tiny_tokenizer, conversation)  # it has its own system turn


def test_raw_text_prompts_keep_the_tokenizers_defaults(tmp_path):
    from nemo_like._transformers.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    path = _write(tmp_path / "p.jsonl", [{"question": "Q: 3 + 5?\nA:", "answer": "8"},
                                         {"question": [{"role": "user", "content": "3 + 5?"}], "answer": "8"}])
    ds = PromptDataset(path, tokenizer, prompt_column="question", use_hf_chat_template=False, assistant_prefix=" The")
    assert ds[0]["prompt"] == "Q: 3 + 5?\nA: The"
    assert ds[0]["prompt_ids"] == tokenizer("Q: 3 + 5?\nA: The")["input_ids"]
    assert ds[0]["columns"] == {"answer": "8"}  # the prompt column is not repeated
    rendered = _template(tokenizer, [{"role": "user", "content": "3 + 5?"}]) + " The"  # lists always use the template
    assert ds[1]["prompt"] == rendered and ds[1]["prompt_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_split_limit_and_collate(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "p.jsonl", [{"prompt": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(10)])
    ds = PromptDataset(path, tiny_tokenizer, split="train[2:8]", limit_dataset_samples=3)
    assert [item["columns"]["answer"] for item in ds] == ["3", "4", "5"] and ds.locations[0] == f"{path}:3"
    batch = collate_prompts([ds[2], ds[0]])
    assert batch == {"prompt_ids": [ds[2]["prompt_ids"], ds[0]["prompt_ids"]],
                     "prompts": [ds[2]["prompt"], ds[0]["prompt"]], "columns": {"answer": ["5", "3"]}, "index": [2, 0]}
    mixed = collate_prompts([{"prompt_ids": [1], "prompt": "a", "columns": {"x": 1}, "index": 0},
                             {"prompt_ids": [2, 3], "prompt": "b", "columns": {"y": 2}, "index": 1}])
    assert mixed["columns"] == {"x": [1, None], "y": [None, 2]} and mixed["prompt_ids"] == [[1], [2, 3]]


@pytest.mark.parametrize("row, message", [
    ({"text": "hi"}, "column 'prompt' (prompt_column) is missing; the row has ['text']"),
    ({"prompt": "  "}, "empty prompt"),
    ({"prompt": 7}, "must be a string or a message list, got int"),
    ({"prompt": []}, "empty message list"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, "prompt[0].role 'robot' is not one of"),
    ({"prompt": [{"role": "user"}]}, "prompt[0] must be an object with 'role' and 'content'"),
    ({"prompt": [{"role": "user", "content": ["x"]}]}, "prompt[0].content must be a string, got list"),
    ({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "ends with an assistant turn"),
    ('{"prompt": "x"', "invalid JSON"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, tiny_tokenizer, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "fine", "answer": "1"}, row])
    with pytest.raises(DatasetError, match=rf"^{path}:2: .*") as err:
        PromptDataset(path, tiny_tokenizer)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_seq_length_refuses_a_longer_prompt_and_settings_are_checked(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "What is 1 plus 2?"}, {"prompt": "What is 1 plus 2? " * 20}])
    first = len(PromptDataset(path, tiny_tokenizer, limit_dataset_samples=1)[0]["prompt_ids"])
    assert len(PromptDataset(path, tiny_tokenizer, seq_length=first, limit_dataset_samples=1)) == 1  # equal is fine
    with pytest.raises(DatasetError, match=rf"^{path}:2: the prompt is \d+ tokens, longer than seq_length={first}$"):
        PromptDataset(path, tiny_tokenizer, seq_length=first)
    with pytest.raises(DatasetError, match="system_prompt.*use_hf_chat_template: true"):
        PromptDataset(path, tiny_tokenizer, use_hf_chat_template=False, system_prompt="s")
    with pytest.raises(DatasetError, match="seq_length: expected a positive integer, got 0"):
        PromptDataset(path, tiny_tokenizer, seq_length=0)
    with pytest.raises(DatasetError, match="not found"):
        PromptDataset(str(tmp_path / "missing.jsonl"), tiny_tokenizer)


# ---------------------------------------------------------------------- data/grpo and its generator
def _generator():
    spec = importlib.util.spec_from_file_location("make_reasoning_data", REPO / "tools" / "make_reasoning_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (GRPO / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_generator_is_deterministic_and_wrote_the_shipped_files(tmp_path):
    generator = _generator()
    for run in ("a", "b"):
        generator.main(["--out", str(tmp_path / run)])
    for task in TASKS:
        for split in SPLITS:
            made = (tmp_path / "a" / task / f"{split}.jsonl").read_bytes()
            assert made == (tmp_path / "b" / task / f"{split}.jsonl").read_bytes()
            assert made == (GRPO / task / f"{split}.jsonl").read_bytes(), (task, split)
            assert len(made) < 1_000_000


def test_shipped_rows_hold_right_answers():
    for task in TASKS:
        assert [len(_rows(task, s)) for s in SPLITS] == [2000, 100, 100], task
    for split in SPLITS:
        for row in _rows("arithmetic", split):
            a, b = (int(t) for t in row["prompt"].rstrip("?.").split()[-3::2])
            assert set(row) == {"prompt", "answer"} and row["answer"] == str(a + b) and 1 <= a <= 9 and 1 <= b <= 9
        for row in _rows("letters", split):
            assert f"'{row['letter']}'" in row["prompt"] and f"'{row['word']}'" in row["prompt"]
            assert row["count"] == row["word"].count(row["letter"]) and "\\boxed{N}" in row["prompt"]
        for row in _rows("countdown", split):
            assert 3 <= len(row["nums"]) <= 4 and isinstance(row["target"], int)
            assert str(row["nums"]) in row["prompt"] and "<answer>" in row["prompt"]
    for task in ("countdown", "letters"):  # disjoint splits
        prompts = [r["prompt"] for s in SPLITS for r in _rows(task, s)]
        assert len(set(prompts)) == len(prompts), task
    for split in ("validation", "test"):  # arithmetic: only 243 prompts exist; held-out splits are distinct within
        prompts = [r["prompt"] for r in _rows("arithmetic", split)]
        assert len(set(prompts)) == len(prompts)
    counts = Counter(r["count"] for r in _rows("letters", "train"))
    assert counts[0] > 100 and counts[2] > 100  # absent letters and repeated ones, not only "1"


def test_the_shipped_arithmetic_prompts_load_with_the_answer_turn_prefilled():
    from nemo_like._transformers.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    ds = PromptDataset(str(GRPO / "arithmetic" / "validation.jsonl"), tokenizer, assistant_prefix="The answer is",
                       seq_length=64)
    assert len(ds) == 100 and ds.locations[0] == f"{GRPO / 'arithmetic' / 'validation.jsonl'}:1"
    first = _rows("arithmetic", "validation")[0]
    assert ds[0]["prompt"].endswith(f"<|im_start|>user\n{first['prompt']}<|im_end|>\n<|im_start|>assistant\n"
                                    "The answer is")
    assert ds[0]["columns"] == {"answer": first["answer"]}
