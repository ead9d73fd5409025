"""Whether a generated answer shows the behaviour the preference quickstart's pairs prefer.

The pairs in ``data/preference`` (written by ``tools/make_preference_data.py``) hold the same correct
content twice: the chosen answer opens with an ``Answer: <x>`` line, the rejected one is a plain
sentence, the way SmolLM2-135M-Instruct answers by habit. A fixed opening line is what a script can
judge without a reference answer, so the share of greedy generations that show it measures what
preference training changed, on any prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ANSWER_LINE = re.compile(r"Answer: \S")


def shows_answer_format(text: str) -> bool:
    """True when the text, leading whitespace aside, starts with ``Answer: `` and a non-blank answer."""
    return ANSWER_LINE.match(text.lstrip()) is not None


def answer_format_rate(texts: Iterable[str]) -> float:
    """The share of ``texts`` that show the answer format (0.0 for none)."""
    judged = [shows_answer_format(t) for t in texts]
    return sum(judged) / len(judged) if judged else 0.0
