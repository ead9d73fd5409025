"""Exact-answer reward: the first number of a completion against the row's reference ``answer``.

Why the first number: with the answer turn pre-filled (``assistant_prefix: "The answer is"``) a
right completion starts with the number, and what a model writes after it (a restatement, a
second guess) must not turn a wrong first answer into a right one. Trailing punctuation ("12.",
"12,") is tolerated; "12.5" is not 12. Follows TRL's reward convention:
``f(prompts, completions, **columns) -> list[float]``, unknown keywords ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

_NUMBER = re.compile(r"(?<![\d.])[-+]?\d+(?:\.\d+)?")


def first_number(text: str) -> Fraction | None:
    """The first number written in ``text`` (exact, as a fraction), or None when it has none."""
    match = _NUMBER.search(text.strip())
    return None if match is None else Fraction(match.group())


def reference_number(value: Any, where: str) -> Fraction:
    """A reference answer (an int, or a string such as "8") as a number; anything else is a ValueError naming it."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return Fraction(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError, ZeroDivisionError):
        raise ValueError(f"{where}: reference answer {value!r} is not a number") from None


def column(columns: dict[str, Any], name: str, completions: Sequence[Any], reward: str) -> list[Any]:
    """The dataset column ``name``, one value per completion; a missing or misaligned column is a one-line error."""
    if name not in columns:
        raise ValueError(f"{reward}: needs the dataset column '{name}'; got {sorted(columns)}")
    values = list(columns[name])
    if len(values) != len(completions):
        raise ValueError(f"{reward}: column '{name}' has {len(values)} values for {len(completions)} completions")
    return values


def exact_answer(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 where a completion's first number equals the ``answer`` column, else 0.0."""
    answers = column(columns, "answer", completions, "exact_answer")
    rewards = []
    for i, (completion, answer) in enumerate(zip(completions, answers)):
        expected = reference_number(answer, f"exact_answer: answer[{i}]")
        rewards.append(1.0 if first_number(completion) == expected else 0.0)
    return rewards
