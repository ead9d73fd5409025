"""Format reward: does the completion think in one tag and then answer in another?

The form is ``<think>...</think>`` then, after optional whitespace, ``<answer>...</answer>``,
with nothing but whitespace around the two; the tag names are settings (``<reasoning>`` is
common too). Why a separate reward: correctness rewards read the answer tag, and a model that
never writes one gets no signal from them; this one teaches the form first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


class FormatTags:
    """1.0 for ``<think>...</think>\\s*<answer>...</answer>`` (the whole completion, whitespace aside), else 0.0."""

    def __init__(self, think_tag: str = "think", answer_tag: str = "answer") -> None:
        for name, tag in (("think_tag", think_tag), ("answer_tag", answer_tag)):
            if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", tag):
                raise ValueError(f"format_tags: {name} {tag!r} is not a tag name (letters, digits, _ and -)")
        self.think_tag, self.answer_tag = think_tag, answer_tag
        t, a = re.escape(think_tag), re.escape(answer_tag)
        self.pattern = re.compile(rf"\s*<{t}>(?:(?!</?{t}>).)*</{t}>\s*<{a}>(?:(?!</?{a}>).)*</{a}>\s*", re.DOTALL)
        self.__name__ = "format_tags"

    def matches(self, completion: str) -> bool:
        return self.pattern.fullmatch(completion) is not None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        return [1.0 if self.matches(c) else 0.0 for c in completions]
