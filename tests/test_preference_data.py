"""data/preference: reproducible from its generator, disjoint splits, and pairs the judge tells apart."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from nemo_like.components.rewards.answer_format import answer_format_rate, shows_answer_format

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")


def _generator():
    spec = importlib.util.spec_from_file_location("make_preference_data", REPO / "tools" / "make_preference_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_generator_is_deterministic_and_wrote_the_shipped_files(tmp_path):
    generator = _generator()
    for run in ("a", "b"):
        generator.main(["--out", str(tmp_path / run)])
    for split in SPLITS:
        first = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert first == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert first == (REPO / "data" / "preference" / f"{split}.jsonl").read_bytes(), split


def test_splits_are_disjoint_and_the_judge_tells_chosen_from_rejected():
    folder = REPO / "data" / "preference"
    rows = {split: _rows(folder, split) for split in SPLITS}
    assert [len(rows[s]) for s in SPLITS] == [1000, 100, 100]
    prompts = {split: {r["prompt"] for r in rows[split]} for split in SPLITS}
    assert sum(len(p) for p in prompts.values()) == 1200  # unique within and across splits
    for split in SPLITS:
        for row in rows[split]:
            assert set(row) == {"prompt", "chosen", "rejected"} and all(isinstance(v, str) for v in row.values())
            assert shows_answer_format(row["chosen"]), row
            assert not shows_answer_format(row["rejected"]), row
    assert answer_format_rate(r["chosen"] for r in rows["test"]) == 1.0


def test_the_judge():
    assert shows_answer_format("Answer: 42\nReason: 17 + 25 = 42.")
    assert shows_answer_format("  \nAnswer: Paris")
    for text in ("17 plus 25 equals 42.", "The answer: 42", "Answer:", "Answer:   \n42", "answer: 42", ""):
        assert not shows_answer_format(text), text
    assert answer_format_rate([]) == 0.0 and answer_format_rate(["Answer: a", "b"]) == 0.5
