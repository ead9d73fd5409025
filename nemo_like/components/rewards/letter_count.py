"""Letter-counting reward, shaped as Oumi scores its letter-count task.

The answer is the one integer written as ``\\boxed{N}``; the reward is minus its distance from
the row's count, plus ``format_bonus`` (0.1) when the answer is boxed. So the right count, boxed,
earns the most (0.1), a count off by two earns -1.9, and a completion without exactly one boxed
integer (none, two that disagree, ``\\boxed{three}``) is read as the count 0, without the bonus:
-count. Why shaped: a near miss earns more than a far one, which gives a small model a gradient
toward the right count before it is ever exactly right.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_BOXED = re.compile(r"\\boxed\{\s*([-+]?\d+)\s*\}")


def boxed_integer(text: str) -> int | None:
    """The integer of the single ``\\boxed{N}`` in ``text``; None when there is none or more than one."""
    found = _BOXED.findall(text)
    return int(found[0]) if len(found) == 1 else None


class LetterCountReward:
    """``-|boxed - count| + format_bonus``, or ``-|count|`` without a single boxed integer; ``column`` names the count."""

    def __init__(self, format_bonus: float = 0.1, column: str = "count") -> None:
        self.format_bonus, self.column = float(format_bonus), column
        self.__name__ = "letter_count"

    def score(self, completion: str, count: int) -> float:
        answer = boxed_integer(completion)
        if answer is None:
            return -float(abs(count))
        return -float(abs(answer - count)) + self.format_bonus

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        if self.column not in columns:
            raise ValueError(f"letter_count: needs the dataset column '{self.column}'; got {sorted(columns)}")
        counts = list(columns[self.column])
        if len(counts) != len(completions):
            raise ValueError(f"letter_count: column '{self.column}' has {len(counts)} values "
                             f"for {len(completions)} completions")
        rewards = []
        for i, (completion, count) in enumerate(zip(completions, counts)):
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError(f"letter_count: {self.column}[{i}] {count!r} is not an integer")
            rewards.append(self.score(completion, count))
        return rewards
