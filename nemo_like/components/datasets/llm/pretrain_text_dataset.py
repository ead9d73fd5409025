"""Plain text for (continued) pretraining: ``{"text": ...}`` rows -> fixed-length blocks, every token a target.

The usual continued-pretraining layout: every document is tokenized and ended with EOS,
the documents are laid end to end in one token stream, and the stream is cut into
blocks of ``seq_length`` model inputs. Labels are the inputs shifted by one; consecutive
blocks overlap by one token, so every token of the stream after the first is a target
exactly once. Attention runs across document boundaries inside a block, as in GPT-style
pretraining; the EOS between documents tells the model where one ends. The documents'
tokens are kept in a cached token table (see ``tokenized_dataset``) and a block is cut from
them when it is read, so the stream is never held in memory.

With ``seq_length: null`` each document is a sample of its own (shifted, all supervised),
which is the layout to combine with ``packed_sequence``: packing then lays documents end
to end with restarting positions and no attention across documents. Unpacked, such a
document may not be longer than the model's context (``max_length``, see
``context_limit``): that is an error naming it, or it is cut with ``truncation``. A
``seq_length`` longer than the context is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import is_truncation_on, pad_token_id_of
from nemo_like.components.datasets.llm.tokenized_dataset import Pieces, TokenizedDataset
from nemo_like.components.datasets.token_table import TokenTable


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


class PretrainTextDataset(TokenizedDataset):
    """Documents from a text column, tokenized at build time and cut into ``seq_length`` blocks.

    ``limit_dataset_samples`` caps the documents read; empty documents are skipped.
    ``drop_remainder`` drops the last, shorter block (so every batch has one shape), as
    Hugging Face's ``group_texts`` does. Each item names the row its block starts in
    (``locations``), for error messages downstream. ``num_proc`` and ``cache_dir`` as in the
    other datasets.
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
        num_proc: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        if tokenizer.eos_token_id is None:
            raise DatasetError("pretraining text needs a tokenizer with an EOS token to separate documents")
        self.tokenizer = tokenizer
        self.seq_length = check_seq_length(seq_length)
        self.text_column = text_column
        self.drop_remainder = drop_remainder
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.row_limit = RowLimit(tokenizer, max_length, self.seq_length, is_truncation_on(truncation),
                                  source=path_or_dataset_id)
        self._load_table(path_or_dataset_id, split, limit_dataset_samples, cache_dir, num_proc,
                         require_samples=self.seq_length is None)
        if self.seq_length is not None:
            self._cut_stream()
            if not len(self.blocks):
                raise DatasetError(f"{path_or_dataset_id}: no training blocks (fewer than seq_length "
                                   f"{self.seq_length} + 1 tokens in all)")

    def _settings(self) -> dict[str, Any]:
        return {"text_column": self.text_column, "blocks": self.seq_length is not None}

    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        text = row_text(where, row, self.text_column)
        return Pieces([text], [True]) if text.strip() else Pieces([], [])

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, list[int]] | None:
        if not encoded:
            return None  # an empty document
        ids = encoded[0]
        if not ids or ids[-1] != self.tokenizer.eos_token_id:
            ids = ids + [self.tokenizer.eos_token_id]
        if self.seq_length is not None:
            return {"input_ids": ids, "labels": []}  # a document of the stream, cut into blocks when read
        if len(ids) < 2:
            return None
        return sample_from(fit_document(self.row_limit, where, ids))

    # ------------------------------------------------------------------ blocks of the stream
    def _cut_stream(self) -> None:
        """Where each block starts in the stream of documents, and which document that is."""
        self.doc_ends = np.cumsum(self.table.lengths)
        total, size = int(self.doc_ends[-1]) if len(self.doc_ends) else 0, self.seq_length
        full = (total - size - 1) // size + 1 if total >= size + 1 else 0
        starts = list(range(0, full * size, size))
        if not self.drop_remainder and total - full * size >= 2:
            starts.append(full * size)
        self.blocks = np.asarray(starts, dtype=np.int64)
        self.stream_length = total

    def _stream(self, start: int, stop: int) -> list[int]:
        doc = int(np.searchsorted(self.doc_ends, start, side="right"))
        out: list[int] = []
        while start < stop:
            begin = int(self.doc_ends[doc - 1]) if doc else 0
            ids = self.table.input_ids[doc]
            piece = ids[start - begin : min(stop, int(self.doc_ends[doc])) - begin]
            out += piece.tolist()
            start += len(piece)
            doc += 1
        return out

    def __len__(self) -> int:
        return len(self.blocks) if self.seq_length is not None else len(self.table)

    def __getitem__(self, idx: int) -> dict[str, list[int]]:
        if self.seq_length is None:
            return super().__getitem__(idx)
        n = len(self.blocks)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"block {idx} out of range ({n} blocks)")
        start = int(self.blocks[idx])
        return sample_from(self._stream(start, min(start + self.seq_length + 1, self.stream_length)))

    def location(self, idx: int) -> str:
        if self.seq_length is None:
            return super().location(idx)
        doc = int(np.searchsorted(self.doc_ends, int(self.blocks[idx]), side="right"))
        return self.sources.where(int(self.table.file[doc]), int(self.table.row[doc]))

    def document_table(self) -> TokenTable | None:
        return self.table if self.seq_length is None else None  # blocks are cut from the rows, not rows

    @property
    def lengths(self) -> Any:
        if self.seq_length is None:
            return self.table.lengths
        return np.minimum(self.stream_length - self.blocks, self.seq_length + 1) - 1
