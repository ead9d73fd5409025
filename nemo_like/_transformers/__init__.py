"""Model and tokenizer loading on top of transformers (imported lazily: transformers is slow to import)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "NeMoAutoModelForCausalLM": "nemo_like._transformers.auto_model",
    "NeMoAutoTokenizer": "nemo_like._transformers.tokenizer",
    "build_tokenizer": "nemo_like._transformers.tokenizer",
    "resolve_pretrained_path": "nemo_like._transformers.embedded",
    "embedded_model_dir": "nemo_like._transformers.embedded",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
