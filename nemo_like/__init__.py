"""nemo_like: readable fine-tuning of causal language models.

The names users type at the top level are loaded on first use, so that
``import nemo_like`` (done by every config and CLI start-up) does not pay for
importing transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from nemo_like._foreign_logs import drop_foreign_deprecations

__version__ = "0.1.0"

drop_foreign_deprecations()

_EXPORTS = {
    "NeMoAutoModelForCausalLM": "nemo_like._transformers.auto_model",
    "NeMoAutoModelForImageTextToText": "nemo_like._transformers.auto_vlm",
    "NeMoAutoTokenizer": "nemo_like._transformers.tokenizer",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
