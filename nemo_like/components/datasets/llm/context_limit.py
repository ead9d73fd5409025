"""How many tokens a row may hold: the dataset's ``seq_length`` when set, else the model's context.

Why: a row longer than the model's context does not fail where it is read; it fails (or
exhausts memory) in the middle of training, in an attention or position-embedding
kernel. Datasets are built before the model, so the context comes in as a plain
``max_length`` argument (the recipe reads it from the model's config, see
:func:`context_length_of`); without it, the tokenizer's ``model_max_length`` is used when
it is a real number (tokenizers that do not know say 1e30). ``max_length: 0`` turns the
check off (packing does, since packs have their own size, checked against the context).

A longer row is an error naming it, its length and the limit, unless ``truncation`` is
on: then it is cut to the limit, and the number of cut rows is logged once.
"""

from __future__ import annotations

import logging
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError

logger = logging.getLogger("nemo_like")

_SANE_CONTEXT = 1_000_000  # above this a "context length" is a placeholder, not a model's limit


def _sane(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value < _SANE_CONTEXT else None


def tokenizer_context(tokenizer: Any) -> int | None:
    """``tokenizer.model_max_length`` when it is a real limit (< 1e6), else None."""
    return _sane(getattr(tokenizer, "model_max_length", None))


def context_length_of(config: Any) -> int | None:
    """The context length a transformers model config declares (``max_position_embeddings`` and its aliases).

    A multimodal config's ``text_config`` is read. When the config asks for RoPE scaling
    (YaRN, linear, dynamic) over an unscaled ``max_position_embeddings``, the scaled length
    is the context. None when the config does not say.
    """
    if config is None:
        return None
    config = getattr(config, "text_config", None) or config
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    length = None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        length = _sane(get(key, None))
        if length is not None:
            break
    if length is None:
        return None
    scaling = get("rope_scaling", None) or {}
    factor, original = scaling.get("factor"), scaling.get("original_max_position_embeddings")
    if isinstance(factor, (int, float)) and factor > 1 and original == length:
        return int(length * factor)
    return length


def resolve_max_length(max_length: int | None, tokenizer: Any) -> tuple[int | None, str]:
    """(context in tokens or None for no limit, where it came from) for a dataset's ``max_length`` argument."""
    if max_length is None:
        context = tokenizer_context(tokenizer)
        return context, "tokenizer.model_max_length"
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
        raise DatasetError(f"dataset.max_length: expected the model's context as a positive integer "
                           f"(0 = no limit, null = the tokenizer's model_max_length), got {max_length!r}")
    return (max_length or None), "max_length"


class RowLimit:
    """The row-length rule of one dataset: checks each row's model inputs, cuts or refuses, counts the cuts.

    ``limit`` is ``seq_length`` when given (which may not exceed the context), else the
    context. Lengths are model inputs: a row of ``n`` tokens is ``n - 1`` inputs once shifted.
    """

    def __init__(self, tokenizer: Any, max_length: int | None, seq_length: int | None, truncate: bool,
                 source: Any = "dataset") -> None:
        context, origin = resolve_max_length(max_length, tokenizer)
        if seq_length is not None and context is not None and seq_length > context:
            raise DatasetError(f"dataset.seq_length: {seq_length} exceeds the model's context of {context} tokens "
                               f"({origin}); lower seq_length to at most {context}")
        self.context, self.origin = context, origin
        self.seq_length = seq_length
        self.limit = seq_length if seq_length is not None else context
        self.truncate = truncate
        self.source = source
        self.seen = 0
        self.truncated = 0
        self._reported = False

    def describe(self) -> str:
        """The limit in words, for messages: ``seq_length 512`` or ``the model's context of 512 tokens (...)``."""
        if self.seq_length is not None:
            return f"seq_length {self.seq_length}"
        return f"the model's context of {self.limit} tokens ({self.origin})"

    def refuse(self, where: str, inputs: int) -> DatasetError:
        """The error for a row of ``inputs`` tokens over the limit, with how to fix it."""
        if self.seq_length is not None:
            return DatasetError(f"{where}: {inputs} tokens exceed seq_length {self.seq_length}; "
                                "raise seq_length or set truncation: true")
        return DatasetError(
            f"{where}: {inputs} tokens exceed {self.describe()}; set dataset.truncation: true to cut such rows "
            f"to {self.limit} tokens, or dataset.seq_length (at most {self.limit}) with truncation: true"
        )

    def keep(self, where: str, inputs: int) -> int:
        """How many of a row's ``inputs`` to keep: all of them, or the limit when truncating; else an error."""
        self.seen += 1
        if self.limit is None or inputs <= self.limit:
            return inputs
        if not self.truncate:
            raise self.refuse(where, inputs)
        self.truncated += 1
        return self.limit

    def report(self) -> None:
        """Log the count of cut rows, once per dataset."""
        if self.truncated and not self._reported:
            self._reported = True
            why = "seq_length" if self.seq_length is not None else f"the model's context, {self.origin}"
            logger.warning("%s: truncated %d of %d row(s) to %d tokens (%s)", self.source, self.truncated,
                           self.seen, self.limit, why)
