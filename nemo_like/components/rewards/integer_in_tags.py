"""Integer-in-tags reward: ``<answer>N</answer>`` must hold the row's reference ``answer``.

Why tags: a model that thinks aloud writes many numbers; the tag says which one is the answer,
so the reward judges that one alone. The last tagged answer counts (a model that corrects itself
ends with its final word), and it must be an integer and nothing else ("<answer>8</answer>",
spaces allowed; "<answer>8 apples</answer>" is not).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INTEGER = re.compile(r"\s*([-+]?\d+)\s*")


def tagged_integer(text: str) -> int | None:
    """The integer inside the last ``<answer>...</answer>`` of ``text``, or None when there is none."""
    found = _TAGGED.findall(text)
    if not found:
        return None
    match = _INTEGER.fullmatch(found[-1])
    return None if match is None else int(match.group(1))


def integer_in_tags(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 where the last ``<answer>`` tag holds the ``answer`` column's integer, else 0.0."""
    if "answer" not in columns:
        raise ValueError(f"integer_in_tags: needs the dataset column 'answer'; got {sorted(columns)}")
    answers = list(columns["answer"])
    if len(answers) != len(completions):
        raise ValueError(f"integer_in_tags: column 'answer' has {len(answers)} values "
                         f"for {len(completions)} completions")
    rewards = []
    for i, (completion, answer) in enumerate(zip(completions, answers)):
        try:
            expected = int(str(answer).strip())
        except ValueError:
            raise ValueError(f"integer_in_tags: answer[{i}] {answer!r} is not an integer") from None
        rewards.append(1.0 if tagged_integer(completion) == expected else 0.0)
    return rewards
