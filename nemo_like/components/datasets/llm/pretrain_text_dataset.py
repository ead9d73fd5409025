"""Plain text for (continued) pretraining: ``{"text": ...}`` rows -> fixed-length blocks, every token a target.

The usual continued-pretraining layout: every document is tokenized and ended with EOS,
the documents are laid end to end in one token stream, and the stream is cut into
blocks of ``seq_length`` model inputs. Labels are the inputs shifted by one; consecutive
blocks overlap by one token, so every token of the stream after the first is a target
exactly once. Attention runs across document boundaries inside a block, as in GPT-style
pretraining; the EOS between documents tells the model where one ends.

With ``seq_length: null`` each document is a sample of its own (shifted, all supervised),
which is the layout to combine with ``packed_sequence``: packing then lays documents end
to end with restarting positions and no attention across documents. Unpacked, such a
document may not be longer than the model's context (``max_length``, see
``context_limit``): that is an error naming it, or it is cut with ``truncation``. A
``seq_length`` longer than the context is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch.utils.data import Dataset

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import is_truncation_on, load_rows, pad_token_id_of


def row_text(where: str, row: dict[str, Any], text_column: str) -> str:
    """The document text of a row; a missing or non-text column is an error naming the row."""
    if text_column not in row:
        raise DatasetError(f"{where}: column '{text_column}' (text_column) is missing; the row has {sorted(row)}")
    text = row[text_column]
    if not isinstance(text, str):
        raise DatasetError(f"{where}: column '{text_column}' holds {type(text).__name__}, not text")
    return text


def document_tokens(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each document (with the tokenizer's BOS if it adds one), ended by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DatasetError("pretraining text needs a tokenizer with an EOS token to separate documents")
    out = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        if not ids or ids[-1] != eos:
            ids.append(eos)
        out.append(ids)
    return out


def sample_from(tokens: Sequence[int]) -> dict[str, list[int]]:
    """A pre-shifted sample in which every token is a target."""
    return {"input_ids": list(tokens[:-1]), "labels": list(tokens[1:]), "attention_mask": [1] * (len(tokens) - 1)}


def check_seq_length(seq_length: int | None) -> int | None:
    if seq_length is None:
        return None
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 1:
        raise DatasetError(f"dataset.seq_length: expected a positive integer or null, got {seq_length!r}")
    return seq_length


def fit_document(row_limit: RowLimit, where: str, ids: list[int]) -> list[int]:
    """A whole document as one sample (``seq_length: null``): within the model's context, or cut to it."""
    return ids[: row_limit.keep(where, len(ids) - 1) + 1]


def cut_blocks(stream: list[int], seq_length: int, drop_remainder: bool) -> Iterable[tuple[int, list[int]]]:
    """(start, tokens) of each block: ``seq_length + 1`` tokens every ``seq_length`` tokens."""
    start = 0
    while start + seq_length + 1 <= len(stream):
        yield start, stream[start : start + seq_length + 1]
        start += seq_length
    if not drop_remainder and len(stream) - start >= 2:
        yield start, stream[start:]


class PretrainTextDataset(Dataset):
    """Documents from a text column, tokenized at build time and cut into ``seq_length`` blocks.

    ``limit_dataset_samples`` caps the documents read; empty documents are skipped.
    ``drop_remainder`` drops the last, shorter block (so every batch has one shape), as
    Hugging Face's ``group_texts`` does. Each item names the row its block starts in
    (``locations``), for error messages downstream.
    """

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        tokenizer: Any,
        seq_length: int | None = 1024,
        split: str | None = None,
        text_column: str = "text",
        limit_dataset_samples: int | None = None,
        drop_remainder: bool = True,
        truncation: str | bool = "do_not_truncate",
        max_length: int | None = None,
    ) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        self.seq_length = check_seq_length(seq_length)
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.row_limit = RowLimit(tokenizer, max_length, self.seq_length, is_truncation_on(truncation),
                                  source=path_or_dataset_id)
        rows = load_rows(path_or_dataset_id, split)
        if limit_dataset_samples is not None:
            rows = rows[: int(limit_dataset_samples)]
        texts = [(where, row_text(where, row, text_column)) for where, row in rows]
        texts = [(where, text) for where, text in texts if text.strip()]
        documents = document_tokens(tokenizer, [text for _, text in texts]) if texts else []
        self.samples: list[dict[str, list[int]]] = []
        self.locations: list[str] = []
        if self.seq_length is None:
            for (where, _), ids in zip(texts, documents):
                if len(ids) >= 2:
                    self.samples.append(sample_from(fit_document(self.row_limit, where, ids)))
                    self.locations.append(where)
        else:
            stream = [t for ids in documents for t in ids]
            ends, total = [], 0  # where each document ends in the stream, to name a block's first row
            for ids in documents:
                total += len(ids)
                ends.append(total)
            doc = 0
            for start, tokens in cut_blocks(stream, self.seq_length, drop_remainder):
                while ends[doc] <= start:
                    doc += 1
                self.samples.append(sample_from(tokens))
                self.locations.append(texts[doc][0])
        if not self.samples:
            hint = "" if self.seq_length is None else f" (fewer than seq_length {self.seq_length} + 1 tokens in all)"
            raise DatasetError(f"{path_or_dataset_id}: no training blocks{hint}")
        self.row_limit.report()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, list[int]]:
        return self.samples[idx]
