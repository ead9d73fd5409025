"""NeMoAutoTokenizer / build_tokenizer: the tokenizer that matches the model loader.

It resolves names exactly like :class:`NeMoAutoModelForCausalLM` (offline hub,
embedded SmolLM2, ``.gguf`` files), so a recipe that names one model gets the
tokenizer of the same weights, and it guarantees a pad token because the
collater pads with it.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from nemo_like._transformers.embedded import hub_load_error, resolve_pretrained_path, split_gguf_path


def build_tokenizer(
    pretrained_model_name_or_path: str | os.PathLike,
    *args: Any,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local dir, a ``.gguf`` file or a hub id; ``pad_token = eos_token`` if missing."""
    name = os.fspath(pretrained_model_name_or_path)
    path, gguf_file = split_gguf_path(resolve_pretrained_path(name), gguf_file)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, *args, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        if not os.path.exists(path):
            raise hub_load_error(name, err) from err
        # A local directory without usable tokenizer files: say which, in one line.
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ValueError(f"{name}: no tokenizer could be loaded from this directory ({first})") from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class NeMoAutoTokenizer:
    """Entry point named like NeMo AutoModel's; returns a plain transformers tokenizer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Use NeMoAutoTokenizer.from_pretrained(...).")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> PreTrainedTokenizerBase:
        """Same as :func:`build_tokenizer`."""
        return build_tokenizer(pretrained_model_name_or_path, *args, **kwargs)
