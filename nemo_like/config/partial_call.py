"""Hydra's `_partial_: true`: a ``functools.partial`` of a gated target whose later keywords are gated too.

Why apart from the loader: building a node checks its call once; a partial is called later, by
code the YAML does not see, so the keywords added then must meet the same argument rules.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


def named_arguments(target: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name, so a positional `_args_` item is judged like a keyword."""
    if not args:
        return kwargs
    try:
        bound = inspect.signature(target).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return {**kwargs, "_args_": list(args)}
    named = dict(bound.arguments)
    for name, param in inspect.signature(target).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in named:
            named.update(named.pop(name))
    return named


class GatedPartial(functools.partial):
    """The ``functools.partial`` a `_partial_: true` node builds: keywords its caller adds later
    meet the same argument rules of the gate as the recipe's own (``trust_remote_code``, pickle)."""

    @classmethod
    def make(cls, target: Any, args: tuple, kwargs: dict[str, Any], key: str, written: str | None) -> "GatedPartial":
        made = cls(target, *args, **kwargs)
        made.gate_key, made.gate_written = key, written
        return made

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        from nemo_like.config.target_gate import check_call_arguments

        shallow = {k: v for k, v in kwargs.items() if not isinstance(v, (dict, list, tuple))}
        if shallow:
            check_call_arguments(self.func, shallow, getattr(self, "gate_key", "_target_"),
                                 getattr(self, "gate_written", None))
        return super().__call__(*args, **kwargs)
