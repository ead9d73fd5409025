"""Length penalty: nothing up to a soft limit, then linearly down to ``-penalty`` at ``max_length``.

Why: RL on verifiable rewards drifts toward long completions that run into the generation limit
and are cut before their answer; a penalty that starts before that limit (DAPO's "overlong
reward shaping") pushes back gently instead of only failing the answer. Length is counted in
characters of the completion text by default; ``unit: tokens`` counts the completion's token ids,
which the trainer passes as ``completion_ids`` (TRL's keyword). Beyond ``max_length`` the reward
stays at ``-penalty``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_UNITS = ("characters", "tokens")


class LengthPenalty:
    """0 for ``length <= soft_length``; ``-penalty * (length - soft_length) / (max_length - soft_length)`` above, capped."""

    def __init__(self, max_length: int, soft_length: int | None = None, unit: str = "characters",
                 penalty: float = 1.0) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"length_penalty: max_length must be a positive integer, got {max_length!r}")
        if soft_length is None:
            soft_length = max_length * 3 // 4
        if isinstance(soft_length, bool) or not isinstance(soft_length, int) or not 0 <= soft_length < max_length:
            raise ValueError(f"length_penalty: soft_length must be an integer in [0, max_length={max_length}), "
                             f"got {soft_length!r}")
        if unit not in _UNITS:
            raise ValueError(f"length_penalty: unit must be one of {list(_UNITS)}, got {unit!r}")
        if penalty < 0:
            raise ValueError(f"length_penalty: penalty must be >= 0 (it is subtracted), got {penalty!r}")
        self.max_length, self.soft_length, self.unit, self.penalty = max_length, soft_length, unit, float(penalty)
        self.__name__ = "length_penalty"

    def score(self, length: int) -> float:
        over = min(max(length - self.soft_length, 0), self.max_length - self.soft_length)
        return -self.penalty * over / (self.max_length - self.soft_length)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float]:
        if self.unit == "characters":
            return [self.score(len(c)) for c in completions]
        ids = columns.get("completion_ids")
        if ids is None:
            raise ValueError("length_penalty: unit 'tokens' needs the completion_ids keyword from the trainer; "
                             "use unit: characters otherwise")
        if len(ids) != len(completions):
            raise ValueError(f"length_penalty: {len(ids)} completion_ids for {len(completions)} completions")
        return [self.score(len(i)) for i in ids]
