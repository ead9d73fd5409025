"""The streaming variant of the pretraining text dataset: documents are read and cut into blocks as they are used.

Why: pretraining corpora are large, so they are read row by row. One pass yields exactly
the blocks of :class:`PretrainTextDataset` over the same rows. The saved state names the
document the next block starts in and how many of its tokens come before that block,
so a resumed run re-reads that one document and goes on with the same blocks, without
storing any tokens in the checkpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.context_limit import RowLimit
from nemo_like.components.datasets.llm.formatting_utils import is_truncation_on, pad_token_id_of
from nemo_like.components.datasets.llm.pretrain_text_dataset import (
    check_seq_length,
    document_tokens,
    fit_document,
    row_text,
    sample_from,
)
from nemo_like.components.datasets.llm.row_stream import hub_rows, local_paths, local_rows, shard, start_position


class PretrainTextIterableDataset(IterableDataset):
    """Documents from a text column of local JSON/JSONL files or a hub dataset, streamed into ``seq_length`` blocks.

    Same layout and options as :class:`PretrainTextDataset`. ``limit_dataset_samples``
    caps the documents of one pass; with ``repeat_on_exhaustion`` the data starts over
    (a new pass, the same blocks) instead of ending. Blocks are dealt round-robin over
    data-parallel ranks and dataloader workers.
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
        repeat_on_exhaustion: bool = True,
        truncation: str | bool = "do_not_truncate",
        max_length: int | None = None,
    ) -> None:
        if tokenizer is None:
            raise DatasetError("dataset: a tokenizer is required")
        self.tokenizer = tokenizer
        self.seq_length = check_seq_length(seq_length)
        self.row_limit = RowLimit(tokenizer, max_length, self.seq_length, is_truncation_on(truncation),
                                  source=path_or_dataset_id)
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.source = path_or_dataset_id
        self.split = split
        self.paths = local_paths(path_or_dataset_id, split) or []
        self.text_column = text_column
        self.limit = None if limit_dataset_samples is None else int(limit_dataset_samples)
        self.drop_remainder = drop_remainder
        self.repeat_on_exhaustion = repeat_on_exhaustion
        self._state = self._start_of_pass(0)

    @staticmethod
    def _start_of_pass(number: int) -> dict[str, Any]:
        # head: the reader position before the document the next block starts in; skip: its tokens before the block
        return {"pass": number, "head": start_position(), "skip": 0, "document": 0, "block": 0}

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """Where the next block starts: the document (its reader position), tokens to skip in it, block number."""
        return {**self._state, "head": dict(self._state["head"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {**self._start_of_pass(0), **state}

    # ------------------------------------------------------------------ reading
    def _documents(self, state: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int, list[int], dict[str, Any]]]:
        """(reader position before the document, its number, its tokens, position after it) from the head on.

        Without ``seq_length`` a document is a sample of its own, so it is held to the model's context here.
        """
        position = dict(state["head"])
        rows = local_rows(self.paths, position) if self.paths else hub_rows(self.source, self.split, position)
        number = state["document"]
        for where, row, after in rows:
            if self.limit is not None and number >= self.limit:
                return
            text = row_text(where, row, self.text_column)
            if text.strip():
                tokens = document_tokens(self.tokenizer, [text])[0]
                if self.seq_length is None and len(tokens) >= 2:
                    tokens = fit_document(self.row_limit, where, tokens)
                yield position, number, tokens, after
            position = after
            number += 1

    def _one_pass(self, state: dict[str, Any]) -> Iterator[dict[str, list[int]]]:
        """The blocks from the state's position to the end of its pass; ``self._state`` names the next one."""
        me, readers = shard()
        size = self.seq_length
        buffer: list[int] = []
        held: deque[list[Any]] = deque()  # [position before, document number, its tokens still in the buffer]
        skip, block = state["skip"], state["block"]
        after_last: tuple[dict[str, Any], int] = (state["head"], state["document"])

        def take(consumed: int) -> dict[str, Any]:
            """Take ``consumed`` tokens off the buffer front; the state that names the next block."""
            nonlocal skip, block
            del buffer[:consumed]
            while consumed and held:
                if consumed >= held[0][2]:
                    consumed -= held[0][2]
                    held.popleft()
                    skip = 0
                else:
                    held[0][2] -= consumed
                    skip += consumed
                    consumed = 0
            block += 1
            head, number = (held[0][0], held[0][1]) if held else after_last
            return {"pass": state["pass"], "head": dict(head), "skip": skip, "document": number, "block": block}

        for index, (before, number, tokens, after) in enumerate(self._documents(state)):
            if index == 0 and skip:
                tokens = tokens[skip:]
            buffer += tokens
            held.append([before, number, len(tokens)])
            after_last = (after, number + 1)
            if size is None:  # one document, one sample
                mine = block % readers == me
                self._state = take(len(buffer))
                if mine:
                    yield sample_from(tokens)
                continue
            while len(buffer) >= size + 1:
                window = buffer[: size + 1]
                mine = block % readers == me
                self._state = take(size)  # set before handing the block out: the state names the next one
                if mine:
                    yield sample_from(window)
        if size is not None and not self.drop_remainder and len(buffer) >= 2:
            window = buffer[:]
            mine = block % readers == me
            self._state = take(len(buffer))
            if mine:
                yield sample_from(window)

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        while True:
            state = self.state_dict()
            yield from self._one_pass(state)
            if self._state["block"] == 0:
                raise DatasetError(f"{self.source}: a whole pass produced no training blocks")
            self.row_limit.report()  # documents cut to the model's context: logged once, after the first pass
            self._state = self._start_of_pass(state["pass"] + 1)  # the next iteration (or resume) starts over
            if not self.repeat_on_exhaustion:
                return
