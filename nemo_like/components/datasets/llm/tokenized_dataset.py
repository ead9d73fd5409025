"""The base of the map-style LLM datasets: rows tokenized in batches into a cached token table, items read lazily.

A dataset class says how one row becomes text pieces (``_pieces``: the strings to
tokenize, each with or without the tokenizer's special tokens) and how the pieces' token
ids become a sample (``_assemble``: pre-shifted ``input_ids`` / ``labels``, or None to drop
the row). This base tokenizes the pieces of a whole batch of rows in one fast-tokenizer call,
runs that over all rows with ``datasets.map(num_proc=N)``, caches the result
(:mod:`~nemo_like.components.datasets.token_table`) and rebuilds each item on read: the
same lists as before (``input_ids``, ``labels``, ``attention_mask``, padded to
``seq_length`` when asked), so collaters, packing and tests see no difference.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash
from torch.utils.data import Dataset

from nemo_like.components.batch import IGNORE_INDEX
from nemo_like.components.datasets.arrow_rows import RowSource
from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.batch_encoder import MISMATCH, BatchEncoder
from nemo_like.components.datasets.llm.chat_renderer import ChatRenderer
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.turn_split import TurnSplit
from nemo_like.components.datasets.token_table import (
    TokenTable,
    code_fingerprint,
    fingerprint,
    load_or_build,
    shifted_lists,
    tokenizer_fingerprint,
)

logger = logging.getLogger("nemo_like")


@dataclass
class Pieces:
    """The texts one row is tokenized from; ``special[i]``: add the tokenizer's BOS/EOS to ``texts[i]``."""

    texts: list[str]
    special: list[bool]
    state: Any = None  # what ``_assemble`` needs besides the token ids
    # {i: prefix}: ``_assemble`` wants ``len(tokenize(prefix))`` for a prefix of ``texts[i]`` (a prompt inside
    # prompt + answer); ``counts[i]`` gets it, counted from the text's tokens where the encoder can (MISMATCH
    # when they do not start with the prefix's), else by tokenizing the prefix.
    prefixes: dict[int, str] | None = None
    counts: dict[int, int] | None = None


def callable_identity(fn: Callable[..., Any] | None) -> str | None:
    """A function's name and a hash of its source, for a cache key; None when its source cannot be read."""
    if fn is None:
        return "none"
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}:{xxhash.xxh3_64_hexdigest(source.encode())}"


class TokenizedDataset(Dataset):
    """Samples of pre-shifted tokens from a token table; subclasses define ``_pieces`` and ``_assemble``."""

    tokenizer: Any
    row_limit: RowLimit
    pad_token_id: int
    seq_length: int | None = None
    pad_to_seq_length: bool = False
    skip_invalid_samples: bool = False
    table: TokenTable

    # ------------------------------------------------------------------ what a dataset class writes
    def _pieces(self, where: str, row: dict[str, Any]) -> Pieces:
        raise NotImplementedError

    def _assemble(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, list[int]] | None:
        raise NotImplementedError

    def _settings(self) -> dict[str, Any] | None:
        """Every argument that changes the tokens (None when one of them cannot be named, e.g. a lambda)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ one row, or a batch of rows
    def _finish(self, where: str, pieces: Pieces, encoded: list[list[int]]) -> dict[str, Any] | None:
        cut_before = self.row_limit.truncated
        sample = self._assemble(where, pieces, encoded)
        if sample is not None:
            sample["cut"] = self.row_limit.truncated > cut_before
        return sample

    def _tokenize(self, where: str, row: dict[str, Any]) -> dict[str, list[int]] | None:
        """One row as an item (or None when it has no label), tokenized piece by piece."""
        pieces = self._pieces(where, row)
        encoded = [list(self._ids(text, special)) for text, special in zip(pieces.texts, pieces.special)]
        self._count_prefixes(pieces, encoded, None)
        sample = self._finish(where, pieces, encoded)
        return None if sample is None else self._item(*shifted_lists(sample))

    def _encode_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | None]:
        """A batch of rows: every row's pieces in one tokenizer call per special-token setting."""
        prepared = [None if isinstance(p, DatasetError) else p for p in self._pieces_of(rows)]  # a skipped row
        encoded = self._encode_texts([p for p in prepared if p is not None])
        samples: list[dict[str, Any] | None] = []
        for (where, _), pieces in zip(rows, prepared):
            if pieces is None:
                samples.append(None)
                continue
            try:
                samples.append(self._finish(where, pieces, next(encoded)))
            except DatasetError:
                if not self.skip_invalid_samples:
                    raise
                samples.append(None)
        return samples

    @property
    def encoder(self) -> BatchEncoder:
        encoder = self.__dict__.get("_encoder")
        if encoder is None or encoder.tokenizer is not self.tokenizer:
            encoder = self.__dict__["_encoder"] = BatchEncoder(self.tokenizer)
        return encoder

    def _renderer(self, chat_template: str) -> ChatRenderer:
        """The chat-template renderer for this tokenizer and template, made once per dataset."""
        renderer = self.__dict__.get("_chat_renderer")
        if renderer is None or renderer.tokenizer is not self.tokenizer or renderer.chat_template != chat_template:
            renderer = self.__dict__["_chat_renderer"] = ChatRenderer(self.tokenizer, chat_template)
        return renderer

    @property
    def _turns(self) -> TurnSplit:
        """What this dataset's template has shown about its turns (probed on the rows it renders exactly)."""
        turns = self.__dict__.get("_turn_split")
        if turns is None:
            turns = self.__dict__["_turn_split"] = TurnSplit()
        return turns

    def _ids(self, text: str | list[str], special: bool, keep: bool = False) -> Any:
        """Token ids only (no attention mask or type ids to build: a quarter of the tokenizer's time)."""
        if isinstance(text, str):
            return self.encoder.encode([text], special)[0]
        return self.encoder.encode(text, special, keep=keep)

    def _pieces_of(self, rows: list[tuple[str, dict[str, Any]]]) -> list[Pieces | DatasetError]:
        """Each row's pieces, or the error it raised (kept only with ``skip_invalid_samples``, else raised at once);
        a subclass may prepare a whole batch at once."""
        out: list[Pieces | DatasetError] = []
        for where, row in rows:
            try:
                out.append(self._pieces(where, row))
            except DatasetError as err:
                if not self.skip_invalid_samples:
                    raise
                out.append(err)
        return out

    def _encode_texts(self, prepared: list[Pieces]) -> Iterator[list[list[int]]]:
        by_flag: dict[bool, list[str]] = {True: [], False: []}
        for pieces in prepared:
            for text, special in zip(pieces.texts, pieces.special):
                by_flag[special].append(text)
        ids = {True: iter(self._ids(by_flag[True], True))}
        ids[False] = iter(self._ids(by_flag[False], False, keep=True))  # prefixes are counted on these
        position = 0  # of the next unflagged text in that batch
        for pieces in prepared:
            encoded = [next(ids[special]) for special in pieces.special]
            if pieces.prefixes:
                self._count_prefixes(pieces, encoded, position)
            position += pieces.special.count(False)
            yield encoded

    def _count_prefixes(self, pieces: Pieces, encoded: list[list[int]], position: int | None) -> None:
        """``pieces.counts``: each asked prefix's token count (see ``Pieces.prefixes``); ``position``: where the row's
        first unflagged text sits in the encoder's last batch (None: not encoded in a batch)."""
        if not pieces.prefixes:
            return
        pieces.counts = {}
        for i, prefix in pieces.prefixes.items():
            count = None
            if position is not None and not pieces.special[i]:
                count = self.encoder.prefix_count(prefix, pieces.texts[i], position + pieces.special[:i].count(False))
            if count is None:
                prefix_ids = self._ids(prefix, pieces.special[i])
                count = len(prefix_ids) if encoded[i][: len(prefix_ids)] == list(prefix_ids) else MISMATCH
            pieces.counts[i] = count

    def _explain(self, where: str, row: dict[str, Any]) -> str | None:
        """Why a row left no sample: its error, or None when it simply had no label."""
        try:
            self._tokenize(where, row)
        except DatasetError as err:
            return str(err)
        return None

    # ------------------------------------------------------------------ building
    def _row_source(self, path_or_dataset_id: str | Sequence[str], split: str | None) -> RowSource:
        """Where the rows come from (a subclass may reorder them, e.g. a seeded shuffle)."""
        return RowSource.of(path_or_dataset_id, split)

    def _load_table(self, path_or_dataset_id: str | Sequence[str], split: str | None, limit: int | None,
                    cache_dir: str | None, num_proc: int | None, require_samples: bool = True) -> None:
        """Tokenize every row (or map the cached tokens), then log the rows cut and skipped, as a build would."""
        source = self._row_source(path_or_dataset_id, split)
        settings = self._settings()
        key = None if settings is None else fingerprint(
            "token-table", code_fingerprint(), source.fingerprint(), tokenizer_fingerprint(self.tokenizer),
            type(self).__module__ + "." + type(self).__qualname__, settings, limit,
            self.row_limit.limit, self.row_limit.truncate)
        describe = path_or_dataset_id if isinstance(path_or_dataset_id, str) else ", ".join(path_or_dataset_id)
        self.table = load_or_build(source, self._encode_rows, key, cache_dir=cache_dir, num_proc=num_proc,
                                   limit=limit, describe=os.path.basename(str(describe)) or str(describe),
                                   explain=self._explain)
        self.sources = source
        manifest = self.table.manifest
        self.row_limit.seen, self.row_limit.truncated = manifest["rows"], manifest["cut"]
        self.skipped = manifest["rows"] - manifest["samples"] if self.skip_invalid_samples else 0
        if self.skipped:
            logger.warning("%s: skipped %d invalid row(s) of %d; the first: %s", type(self).__name__,
                           self.skipped, manifest["rows"], manifest["first_problem"])
        if require_samples and not len(self.table):
            why = f" ({self.skipped} skipped)" if self.skipped else ""
            raise DatasetError(f"{path_or_dataset_id}: no usable rows{why}")
        self.row_limit.report()

    # ------------------------------------------------------------------ reading
    def _item(self, input_ids: list[int], labels: list[int]) -> dict[str, list[int]]:
        n = len(input_ids)
        item = {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * n}
        if self.pad_to_seq_length and self.seq_length is not None and n < self.seq_length:
            pad = self.seq_length - n
            item["input_ids"] = input_ids + [self.pad_token_id] * pad
            item["labels"] = labels + [IGNORE_INDEX] * pad
            item["attention_mask"] += [0] * pad
        return item

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, idx: int | slice) -> Any:
        n = len(self.table)
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(n))]
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"sample {idx} out of range ({n} samples)")
        return self._item(self.table.input_ids[idx].tolist(), self.table.labels[idx].tolist())

    def location(self, idx: int) -> str:
        """The file and line (or index) a sample was read from."""
        return self.sources.where(int(self.table.file[idx]), int(self.table.row[idx]))

    def document_table(self) -> TokenTable | None:
        """The token table whose rows are this dataset's items without padding, for readers of arrays (packing)."""
        return self.table

    @property
    def lengths(self) -> Any:
        """Real tokens of every sample (a numpy array, read from the table without building items)."""
        return self.table.lengths

    @property
    def samples(self) -> _LazyList:
        """Every item, built when read (a sequence, for code that wants a list)."""
        return _LazyList(len(self), self.__getitem__)

    @property
    def locations(self) -> _LazyList:
        """Where every sample came from (``file:line``), built when read."""
        return _LazyList(len(self), self.location)


class _LazyList(Sequence):
    """A read-only list whose items are computed on access; equal to a list with the same items."""

    def __init__(self, n: int, get: Callable[[int], Any]) -> None:
        self.n, self.get = n, get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self.get(j) for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.get(i)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, tuple, Sequence)) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.n} lazily read items>"
