"""Helpers every LLM dataset shares: the pre-shifted sample format and the padding/truncation words.

Keeping them in one place means an instruction row, a chat and an xLAM call all come
out in exactly the same shape (``input_ids``, ``labels``, ``attention_mask``, shifted
by one, -100 where there is no loss) and name a bad row the same way (``file:line``).
"""

from __future__ import annotations

from typing import Any

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.json_rows import DatasetError


def shift_and_pad(
    ids: list[int], labels: list[int], seq_length: int | None = None, pad_token_id: int = 0
) -> dict[str, list[int]] | None:
    """The pre-shifted sample (``labels[i]`` is the target of ``input_ids[i]``), padded to ``seq_length`` when given.

    ``labels`` are aligned with ``ids`` (-100 where there is no loss). Returns None when no
    token carries a label, since such a row would only add zeros to the loss.
    """
    sample = {"input_ids": ids[:-1], "labels": labels[1:], "attention_mask": [1] * (len(ids) - 1)}
    if sample["labels"].count(IGNORE_INDEX) == len(sample["labels"]):
        return None
    if seq_length is not None:
        pad = seq_length - len(sample["input_ids"])
        sample["input_ids"] += [pad_token_id] * pad
        sample["labels"] += [IGNORE_INDEX] * pad
        sample["attention_mask"] += [0] * pad
    return sample


def is_truncation_on(truncation: str | bool | None) -> bool:
    """HF-style ``truncation`` values: False / None / "do_not_truncate" mean off."""
    return truncation not in (False, None, "do_not_truncate")


def is_padding_to_max_length(padding: str | bool | None) -> bool:
    """HF-style ``padding``: "max_length" (or True) pads every row to ``seq_length``."""
    return padding in ("max_length", True)


def pad_token_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its EOS id when it has none (as SmolLM2 and most chat models)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DatasetError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return int(pad)
