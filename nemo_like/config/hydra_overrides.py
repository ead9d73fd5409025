"""Hydra's override grammar on the command line: `a.b=1`, `+new.key=1`, `++a.b=1`, `~a.b`.

People who know Hydra type its forms; they are parsed by hydra-core's own override parser so
quoting, lists `[1,2]`, dicts `{k: v}`, `null` and escapes mean what Hydra's documentation
says. Unquoted values are then typed like `--a.b VALUE` values (``parse_literal``), so both
spellings of an override give the same value. Sweeps (`a=1,2`, `choice()`, `range()`, ...)
are refused: a recipe script runs one job.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from nemo_like.config.errors import ConfigError

__all__ = ["ANY_VALUE", "CliOverride", "QuotedStr", "looks_like_hydra_override", "parse_hydra_override"]

_FUNCTION_CALL = re.compile(r"^\s*[A-Za-z_]\w*\s*\(")


class _AnyValue:
    """`~a.b` without a value: delete whatever is there."""

    def __repr__(self) -> str:
        return "<any value>"


ANY_VALUE: Any = _AnyValue()


class CliOverride(tuple):
    """A `(dotted.key, value)` pair from the command line that also says what to do with it.

    ``op``: "set" (`--a.b v`, creates the key), "change" (`a.b=v`, the key must exist),
    "add" (`+a.b=v`, it must not), "force_add" (`++a.b=v`) or "delete" (`~a.b[=v]`).
    A plain 2-tuple still compares equal, so callers that build `(key, value)` pairs keep working.
    """

    op: str
    text: str

    def __new__(cls, key: str, value: Any, op: str = "set", text: str = "") -> "CliOverride":
        made = super().__new__(cls, (key, value))
        made.op, made.text = op, text or key
        return made

    def __reduce__(self) -> tuple:
        return (CliOverride, (self[0], self[1], self.op, self.text))


def looks_like_hydra_override(token: str) -> bool:
    """`key=value`, `+key=value`, `++key=value`, `~key`: a bare word without `=` is not one."""
    if token.startswith(("+", "~")):
        return True
    return "=" in token and not token.startswith("-")


def parse_hydra_override(token: str, parse_literal: Callable[[str], Any]) -> CliOverride:
    """One Hydra-style token as a typed CliOverride; a grammar error or a sweep is one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, QuotedString
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_overrides([token])[0]
    except HydraException as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()
                          if line.strip() and not line.strip().startswith(("See https://", "^")))
        raise ConfigError(f"{token!r}: not a valid override ({detail}); "
                          f"forms: a.b=VALUE, +a.b=VALUE, ++a.b=VALUE, ~a.b, --a.b VALUE") from None
    key = override.key_or_group
    if not key:
        raise ConfigError(f"{token!r}: no key given; forms: a.b=VALUE, +a.b=VALUE, ++a.b=VALUE, ~a.b")
    if override.package is not None or "/" in key:
        raise ConfigError(f"{token!r}: config groups and '@package' are not supported; "
                          f"override a key by its dotted path, e.g. optimizer.lr=1e-5")
    if override.is_sweep_override():
        raise ConfigError(f"{token!r}: sweeps (a=1,2, choice(), range(), interval(), glob()) are not supported, "
                          f"this runs one job; give one value (quote a value holding a comma: {key}='1,2')")
    ops = {OverrideType.CHANGE: "change", OverrideType.ADD: "add",
           OverrideType.FORCE_ADD: "force_add", OverrideType.DEL: "delete"}
    op = ops[override.type]
    prefix = {"change": "", "add": "+", "force_add": "++", "delete": "~"}[op]
    raw = override._value  # QuotedString marks what the user quoted
    if op == "delete" and raw is None and "=" not in token:
        return CliOverride(key, ANY_VALUE, op, f"~{key}")
    text = token.partition("=")[2]

    def typed(value: Any, top: bool) -> Any:
        if isinstance(value, QuotedString):
            return QuotedStr(value.text)
        if isinstance(value, str):
            return parse_literal(value)
        if isinstance(value, list):
            return [typed(v, False) for v in value]
        if isinstance(value, dict):
            return {k: typed(v, False) for k, v in value.items()}
        if top and not _FUNCTION_CALL.match(text):
            return parse_literal(text)  # `a=inf` reads as `--a inf` does
        return value

    return CliOverride(key, typed(raw, True), op, f"{prefix}{key}=")


class QuotedStr(str):
    """A string the user quoted on the command line: not typed as a literal after `$` forms resolve."""
