"""One reading of a dtype written in YAML, for every section that takes one.

``bf16``, ``bfloat16``, ``torch.bfloat16`` and ``torch.bfloat16`` itself all mean the same
thing everywhere. torch is imported on first use: the ``distributed`` section is checked
before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from nemo_like.config.errors import ConfigError

if TYPE_CHECKING:
    import torch

FLOATS = ("float32", "bfloat16", "float16")
_SPELLINGS = {
    "float32": "float32", "fp32": "float32", "float": "float32", "32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16", "16": "float16",
    "uint8": "uint8", "int8": "int8",
}


def parse_dtype(value: Any, key: str, allowed: Iterable[str] = FLOATS, optional: bool = True) -> torch.dtype | None:
    """``value`` as a ``torch.dtype`` among ``allowed``; ``None``/``"none"``/``""`` give None when ``optional``.

    A mistake is one ``ConfigError`` naming ``key``, the value and the choices.
    """
    import torch

    allowed = tuple(allowed)
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
    elif value is None:
        name = "none"
    else:
        text = str(value).strip().lower().removeprefix("torch.")
        name = "none" if text in ("none", "null", "") else _SPELLINGS.get(text, text)
    if name == "none" and optional:
        return None
    if name not in allowed:
        raise ConfigError(f"{key}: {value!r} is not a dtype; use one of {', '.join(allowed)}")
    return getattr(torch, name)
