"""The one-line errors a recipe or override gets, and the "did you mean" hint they carry."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A mistake in a recipe or override, reported on one line that names the key."""

    def __init__(self, message: object) -> None:
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        super().__init__(" ".join(lines))


class ConfigKeyError(ConfigError, AttributeError):
    """A missing key read as an attribute; still an AttributeError so hasattr() works."""


def did_you_mean(word: str, candidates: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in candidates}
        found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[found[0]]] if found else []
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""
