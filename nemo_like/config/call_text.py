"""A call described in one line: what a target accepts, what the recipe gave it, secrets masked.

Used when a recipe's arguments do not fit what they build, so the message shows the
signature and the given values without ever printing a model, a tensor or a token.
"""

from __future__ import annotations

import inspect
import sys
from types import ModuleType
from typing import Any

from nemo_like.config.errors import ConfigError
from nemo_like.config.secrets import is_secret_key

__all__ = ["brief_call", "check_binding", "describe"]

_REDACTED = "'***'"


def describe(obj: Any) -> str:
    """An import-path style name for anything: 'torch.optim.adamw.AdamW', 'torch.bfloat16'."""
    if isinstance(obj, str):
        return obj
    if type(obj).__name__ == "dtype" and type(obj).__module__ == "torch":
        return str(obj)
    inner = getattr(obj, "func", None)  # functools.partial
    if inner is not None and callable(inner) and not inspect.isroutine(obj):
        return describe(inner)
    if isinstance(obj, ModuleType):
        return obj.__name__
    if inspect.isclass(obj) or inspect.isroutine(obj):
        module = getattr(obj, "__module__", None)
        name = getattr(obj, "__name__", None)
        if module and name and getattr(sys.modules.get(module), name, None) is obj:
            return f"{module}.{name}"  # also right for builtins whose qualname is internal
        qualname = getattr(obj, "__qualname__", None) or name or repr(obj)
        return f"{module}.{qualname}" if module else qualname
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_binding(target: Any, args: tuple, built: dict, key: str, raw_target: Any, partial: bool = False) -> None:
    """A call that does not fit the target's signature is the recipe's mistake: one line, what it takes and got.

    ``partial``: the arguments may leave required parameters to the later caller (`_partial_: true`).
    """
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return  # no signature to hold the call against (some builtins): the call itself decides
    try:
        (signature.bind_partial if partial else signature.bind)(*args, **built)
    except TypeError as err:
        raise ConfigError(
            f"{key}: building {describe(raw_target)} failed: {err}; signature {_signature(target)}; "
            f"given {brief_call(args, built)}"
        ) from err


def _signature(target: Any) -> str:
    try:
        return f"{describe(target)}{inspect.signature(target)}"
    except (TypeError, ValueError):
        return f"{describe(target)}(<signature unavailable>)"


def _brief(value: Any, depth: int = 0) -> str:
    """A short, cheap rendering of an argument (never the repr of a model or tensor)."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(value, (list, tuple)) and depth < 2:
        if len(value) <= 6:
            inner = ", ".join(_brief(v, depth + 1) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner})"
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, dict) and depth < 2:
        items = (
            f"{k!r}: {_REDACTED if is_secret_key(k) else _brief(v, depth + 1)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    return f"<{type(value).__name__}>"


def brief_call(args: tuple, kwargs: dict) -> str:
    parts = [_brief(a) for a in args]
    parts += [f"{k}={_REDACTED if is_secret_key(k) else _brief(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"
