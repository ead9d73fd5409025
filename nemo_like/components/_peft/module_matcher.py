"""Decide which linear layers of a model receive a LoRA adapter.

Patterns are anchored on the full module name (``model.layers.0.self_attn.q_proj``)
and ``*`` matches any run of characters, dots included, so ``*_proj`` and
``model.layers.*.self_attn.q_proj`` both work. A pattern without ``*`` also matches
any module whose name ends with ``.<pattern>``: users coming from HF PEFT write
``q_proj`` and expect it to hit every ``...q_proj``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from torch import nn

# Output heads that "all linear layers" must never include: adapting the vocabulary
# projection is rarely wanted and breaks tied embeddings.
_OUTPUT_HEAD_NAMES = ("lm_head",)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    """Turn a ``*`` glob into an anchored regex; every other character is literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def pattern_matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` names the module ``name`` (see the module docstring)."""
    if "*" not in pattern:
        return name == pattern or name.endswith("." + pattern)
    return _compile(pattern).fullmatch(name) is not None


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


class ModuleMatcher:
    """Select ``nn.Linear`` modules by name patterns or "every linear layer".

    Only plain linear layers are selected: LoRA here adapts ``y = x W^T + b``, and a
    pattern that happens to hit a container (``*.mlp``) must not wrap it.
    """

    def __init__(
        self,
        target_modules: str | Iterable[str] | None = None,
        exclude_modules: str | Iterable[str] | None = None,
        match_all_linear: bool = False,
    ) -> None:
        self.target_modules = _as_list(target_modules)
        self.exclude_modules = _as_list(exclude_modules)
        self.match_all_linear = bool(match_all_linear)
        if self.target_modules and self.match_all_linear:
            raise ValueError("target_modules: cannot be combined with match_all_linear=True; set only one of them")

    def is_excluded(self, name: str) -> bool:
        """True when an exclude pattern names this module."""
        return any(pattern_matches(p, name) for p in self.exclude_modules)

    def match(self, name: str, module: nn.Module) -> bool:
        """True when ``module`` (registered as ``name``) should get an adapter."""
        if not isinstance(module, nn.Linear) or self.is_excluded(name):
            return False
        if self.match_all_linear:
            return name.rsplit(".", 1)[-1] not in _OUTPUT_HEAD_NAMES
        return any(pattern_matches(p, name) for p in self.target_modules)

    def unused_patterns(self, matched_names: Iterable[str]) -> list[str]:
        """Target patterns that selected none of ``matched_names`` (likely typos)."""
        names = list(matched_names)
        return [p for p in self.target_modules if not any(pattern_matches(p, n) for n in names)]

    def __repr__(self) -> str:
        return (
            f"ModuleMatcher(target_modules={self.target_modules}, exclude_modules={self.exclude_modules}, "
            f"match_all_linear={self.match_all_linear})"
        )
