"""Reward functions: right answers score, wrong and hostile ones do not, and nothing raises on a model's text."""

from __future__ import annotations

import time

import pytest

from nemo_like.components.rewards.countdown import CountdownReward, evaluate
from nemo_like.components.rewards.exact_answer import exact_answer
from nemo_like.components.rewards.format_tags import FormatTags
from nemo_like.components.rewards.integer_in_tags import integer_in_tags
from nemo_like.components.rewards.length_penalty import LengthPenalty
from nemo_like.components.rewards.letter_count import LetterCountReward

TRL_EXTRAS = {"completion_ids": [[1, 2]], "trainer_state": object(), "log_extra": None, "log_metric": None}


def _one(reward, completion, **columns):
    extras = {k: v for k, v in TRL_EXTRAS.items() if k not in columns}
    return reward(["a prompt"], [completion], **columns, **extras)[0]


def test_exact_answer_reads_the_first_number():
    cases = {" 8.": 1.0, "8": 1.0, " 8, because 3 + 5 = 8": 1.0, "\n 8\n": 1.0, "8.0": 1.0, " eight": 0.0,
             " 9. No, 8.": 0.0, "3 + 5 = 8": 0.0, "8.5": 0.0, "": 0.0, "-8": 0.0, " 18": 0.0}
    for completion, expected in cases.items():
        assert _one(exact_answer, completion, answer=["8"]) == expected, completion
    assert exact_answer(["p", "p"], [" 12,", " -3"], answer=[12, "-3"], unknown=[0, 0]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="needs the dataset column 'answer'"):
        exact_answer(["p"], ["8"], target=[8])
    with pytest.raises(ValueError, match=r"answer\[0\]: reference answer 'eight' is not a number"):
        exact_answer(["p"], ["8"], answer=["eight"])


def test_integer_in_tags_judges_the_last_tag():
    cases = {"<answer>8</answer>": 1.0, "thinking 7 ... <answer> 8 </answer>": 1.0,
             "<answer>7</answer> wait <answer>8</answer>": 1.0, "<answer>8</answer><answer>7</answer>": 0.0,
             "<answer>8 apples</answer>": 0.0, "<answer>8.0</answer>": 0.0, "8": 0.0, "<answer>8": 0.0}
    for completion, expected in cases.items():
        assert _one(integer_in_tags, completion, answer=["8"]) == expected, completion
    with pytest.raises(ValueError, match="integer_in_tags: answer"):
        integer_in_tags(["p"], ["<answer>8</answer>"], answer=["x"])


def test_countdown_scores_correct_expressions_only():
    reward = CountdownReward()
    nums, target = [3, 5, 7, 3], 26
    good = ["<answer>3 * 7 + 5</answer>", "<think>try</think>\n<answer> 5 * 7 - 3 * 3 </answer>",
            "<answer>(7 * 3 + 5)</answer> and more text", "<answer>1</answer> no: <answer>7*5-3*3</answer>"]
    for completion in good:
        assert _one(reward, completion, nums=[nums], target=[target]) == 1.0, completion
    assert evaluate("(7 - 5) / 3", [7, 5, 3]) * 3 == 2  # exact fractions, not floats
    assert _one(reward, "<answer>3 * 7 + 5</answer>", nums=[[3, 5, 7]], target=[26.0000000001]) == 1.0
    wrong = {
        "no tag": "3 * 7 + 5",
        "wrong value": "<answer>3 + 7 + 5</answer>",
        "a number used twice": "<answer>5 * 5 + 7 - 3 - 3</answer>",
        "reused beyond the multiset": "<answer>(7 * 3 + 5) * 3 / 3</answer>",
        "a foreign number": "<answer>26</answer>",
        "division by zero": "<answer>5 / (3 - 3) + 7</answer>",
        "power": "<answer>2**999999</answer>",
        "power with nums": "<answer>3 ** 3 - 1</answer>",
        "import": "<answer>__import__('os').system('echo hi')</answer>",
        "names": "<answer>nums[0] + target</answer>",
        "lambda": "<answer>(lambda: 26)()</answer>",
        "decimal": "<answer>5.2 * 5</answer>",
        "unary minus": "<answer>-(3 * 3 - 5 * 7)</answer>",
        "unbalanced": "<answer>(3 * 7 + 5</answer>",
        "empty": "<answer></answer>",
        "juxtaposed": "<answer>3 7 + 5</answer>",
        "deep nesting": "<answer>" + "(" * 40 + "3 * 7 + 5" + ")" * 40 + "</answer>",
        "huge": "<answer>" + "+".join(["3"] * 5000) + "</answer>",
    }
    start = time.perf_counter()
    for why, completion in wrong.items():
        assert _one(reward, completion, nums=[nums], target=[target]) == 0.0, why
    assert time.perf_counter() - start < 1.0
    oumi = CountdownReward(format_score=0.1)
    assert _one(oumi, "<answer>3 + 7 + 5</answer>", nums=[nums], target=[target]) == 0.1
    assert _one(oumi, "<answer>__import__('os')</answer>", nums=[nums], target=[target]) == 0.1
    assert _one(oumi, "3 * 7 + 5", nums=[nums], target=[target]) == 0.0
    with pytest.raises(ValueError, match="countdown: needs the dataset column 'target'"):
        reward(["p"], ["x"], nums=[[1]])


def _fold_solution(nums: list[int], target: int) -> str | None:
    """An expression that folds some of ``nums`` in order with + - * / (either operand first), the way the data
    generator builds targets; None when there is none."""
    import itertools

    for k in range(2, len(nums) + 1):
        for perm in itertools.permutations(nums, k):
            for ops in itertools.product(("+", "-", "*", "/", "r-", "r/"), repeat=k - 1):
                text = str(perm[0])
                for op, n in zip(ops, perm[1:]):
                    text = f"({n} {op[1]} {text})" if op.startswith("r") else f"({text} {op} {n})"
                if evaluate(text, nums) == target:
                    return text
    return None


def test_every_shipped_countdown_target_is_reachable_and_rewarded():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "data" / "grpo" / "countdown"
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    solutions = [_fold_solution(row["nums"], row["target"]) for row in rows]
    assert all(solutions), [row for row, s in zip(rows, solutions) if s is None]
    completions = [f"<think>search</think><answer>{s}</answer>" for s in solutions]
    columns = {"nums": [r["nums"] for r in rows], "target": [r["target"] for r in rows]}
    assert CountdownReward()([r["prompt"] for r in rows], completions, **columns) == [1.0] * len(rows)
    assert FormatTags()([r["prompt"] for r in rows], completions) == [1.0] * len(rows)


def test_letter_count_follows_oumis_shaping():
    reward = LetterCountReward()
    cases = [("There are \\boxed{3} r's", 3, 0.1), ("\\boxed{+3}", 3, 0.1), ("\\boxed{ 5 }", 3, -1.9),
             ("\\boxed{-1}", 1, -1.9), ("3", 3, -3.0), ("\\boxed{three}", 0, 0.0), ("\\boxed{1} \\boxed{2}", 1, -1.0),
             ("\\boxed{10}.", 3, -6.9), ("", 2, -2.0)]
    for completion, count, expected in cases:
        assert _one(reward, completion, count=[count]) == pytest.approx(expected), completion
    assert _one(LetterCountReward(format_bonus=0.0, column="letter_count"), "\\boxed{2}", letter_count=[2]) == 0.0
    with pytest.raises(ValueError, match="needs the dataset column 'count'"):
        reward(["p"], ["x"], letter=["r"])
    with pytest.raises(ValueError, match=r"count\[0\] '3' is not an integer"):
        reward(["p"], ["x"], count=["3"])


def test_format_tags():
    reward = FormatTags()
    cases = {"<think>add them</think><answer>8</answer>": 1.0, "\n<think>a\nb</think>\n\n<answer>8</answer>\n": 1.0,
             "<answer>8</answer>": 0.0, "<think>x</think>": 0.0, "<answer>8</answer><think>x</think>": 0.0,
             "so <think>x</think><answer>8</answer>": 0.0, "<think>x</think><answer>8</answer> extra": 0.0,
             "<think>x<think>y</think><answer>8</answer>": 0.0, "": 0.0}
    for completion, expected in cases.items():
        assert _one(reward, completion) == expected, completion
    custom = FormatTags(think_tag="reasoning", answer_tag="final")
    assert _one(custom, "<reasoning>r</reasoning><final>8</final>") == 1.0
    assert _one(custom, "<think>r</think><answer>8</answer>") == 0.0
    with pytest.raises(ValueError, match="think_tag"):
        FormatTags(think_tag="a>b")


def test_length_penalty_in_characters_and_tokens():
    chars = LengthPenalty(max_length=20, soft_length=10)
    texts = ["x" * n for n in (0, 10, 15, 20, 100)]
    assert chars(["p"] * 5, texts, answer=[None] * 5) == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert LengthPenalty(max_length=8)(["p"], ["x" * 7]) == [-0.5]  # soft limit 3/4 of max_length: 6
    tokens = LengthPenalty(max_length=4, soft_length=2, unit="tokens", penalty=2.0)
    assert tokens(["p", "p"], ["long text", "x"], completion_ids=[[1, 2, 3], [1, 2, 3, 4, 5]]) == [-1.0, -2.0]
    with pytest.raises(ValueError, match="completion_ids"):
        tokens(["p"], ["x"])
    for bad in ({"max_length": 0}, {"max_length": 4, "soft_length": 4}, {"max_length": 4, "unit": "words"}):
        with pytest.raises(ValueError, match="length_penalty"):
            LengthPenalty(**bad)
