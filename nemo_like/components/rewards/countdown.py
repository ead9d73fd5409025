"""Countdown reward: does the expression in ``<answer>...</answer>`` reach ``target`` from ``nums``?

The expression may hold only integers, ``+ - * /``, parentheses and spaces; each of the row's
numbers may be used at most once (as a multiset: ``[3, 3, 5]`` lets ``3`` appear twice). It is
evaluated by a small recursive-descent parser over exact fractions, never by ``eval``: nothing
but those four binary operators is understood, so names, calls, attribute access and powers are
not code here but unreadable text, and every number must be one of the row's, so the values stay
small. Scoring follows the TinyZero rule Oumi uses: ``correct_score`` for a right expression,
``format_score`` for an answer tag whose expression is unusable or wrong (0.0 by default; Oumi
gives 0.1), 0.0 without an answer tag. Division by zero is a wrong answer, not an error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ALLOWED = re.compile(r"[\d+\-*/() ]+")
_TOKEN = re.compile(r"\d+|[-+*/()]")
MAX_EXPRESSION = 200  # characters: a countdown answer is a short line
MAX_DEPTH = 32  # nested parentheses


class _Unusable(Exception):
    """The expression cannot be read or evaluated (syntax, a foreign number, division by zero)."""


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*; factor := INT | '(' expr ')'."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.at, self.depth = tokens, 0, 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Unusable("unexpected end")
        self.at += 1
        return token

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor()
            if op == "*":
                value *= right
            elif right == 0:
                raise _Unusable("division by zero")
            else:
                value /= right
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Unusable("nested too deeply")
            value = self.expression()
            if self.take() != ")":
                raise _Unusable("unbalanced parentheses")
            self.depth -= 1
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise _Unusable(f"unexpected {token!r}")


def evaluate(expression: str, nums: Sequence[int]) -> Fraction | None:
    """The exact value of ``expression`` when it is well formed and uses only ``nums`` (each at most once), else None."""
    if len(expression) > MAX_EXPRESSION or not _ALLOWED.fullmatch(expression):
        return None
    tokens = _TOKEN.findall(expression)
    if not tokens:
        return None
    used = Counter(int(t) for t in tokens if t.isdigit())
    if used - Counter(int(n) for n in nums):  # a number that is not the row's, or one used too often
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expression()
    except _Unusable:
        return None
    return value if parser.at == len(tokens) else None


class CountdownReward:
    """``correct_score`` when the last ``<answer>`` expression equals ``target`` (within ``tolerance``); see the module."""

    def __init__(self, correct_score: float = 1.0, format_score: float = 0.0, tolerance: float = 1e-6) -> None:
        self.correct_score, self.format_score, self.tolerance = float(correct_score), float(format_score), tolerance
        self.__name__ = "countdown"

    def score(self, completion: str, nums: Sequence[int], target: float) -> float:
        found = _TAGGED.findall(completion)
        if not found:
            return 0.0
        value = evaluate(found[-1].strip(), nums)
        if value is None or abs(float(value) - float(target)) > self.tolerance:
            return self.format_score
        return self.correct_score

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        for name in ("nums", "target"):
            if name not in columns:
                raise ValueError(f"countdown: needs the dataset column '{name}'; got {sorted(columns)}")
            if len(columns[name]) != len(completions):
                raise ValueError(f"countdown: column '{name}' has {len(columns[name])} values "
                                 f"for {len(completions)} completions")
        return [self.score(c, nums, target) for c, nums, target in zip(completions, columns["nums"], columns["target"])]
