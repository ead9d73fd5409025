"""The streaming variant of the column-mapped instruction dataset: rows are read and tokenized as they are used.

Why: a large JSONL file (or a hub dataset with ``streaming=True``) should not be read
whole before training starts. The dataset remembers where it is (the byte offset in a
local file, or the hub iterator's own state), and ``state_dict()`` / ``load_state_dict()``
let a ``StatefulDataLoader`` resume at exactly the next row, so a resumed run sees the
same next batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset

from nemo_like.components.datasets.json_rows import DatasetError
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)
from nemo_like.components.datasets.llm.row_stream import hub_rows, local_paths, local_rows, shard, start_position


class _RowFormatter(ColumnMappedTextInstructionDataset):
    """The column-mapped tokenization of one row, without reading any rows up front."""

    def _load_samples(self, path_or_dataset_id: str | Sequence[str], split: str | None, limit: int | None,
                      cache_dir: str | None, num_proc: int | None) -> None:
        """Nothing is read up front: rows are tokenized one by one as they stream."""


class ColumnMappedTextInstructionIterableDataset(IterableDataset):
    """Column-mapped instruction rows streamed from local JSON/JSONL files or a hub dataset.

    Same columns, masking and errors as :class:`ColumnMappedTextInstructionDataset`;
    a bad row stops iteration naming its file and line. ``limit_dataset_samples`` caps
    the samples of one pass; with ``repeat_on_exhaustion`` the data starts over (a new
    pass) instead of ending (the recipe turns it off: its epochs repeat the data). Rows
    are dealt round-robin over data-parallel ranks and dataloader workers. The prompt and
    completion may be written by templates or functions, as in the map-style dataset.
    Rows longer than ``seq_length`` (or, without it, the model's context ``max_length``)
    are an error, or cut with ``truncation``; the cut rows are counted and logged once,
    at the end of the first pass.
    """

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        column_mapping: dict[str, str] | None = None,
        tokenizer: Any = None,
        split: str | None = None,
        answer_only_loss_mask: bool = True,
        seq_length: int | None = None,
        padding: str | bool = "do_not_pad",
        truncation: str | bool = "do_not_truncate",
        limit_dataset_samples: int | None = None,
        use_hf_chat_template: bool = False,
        start_of_turn_token: str | None = None,
        repeat_on_exhaustion: bool = True,
        prompt_template: str | None = None,
        prompt_func: str | Callable[[dict[str, Any]], str] | None = None,
        completion_template: str | None = None,
        completion_func: str | Callable[[dict[str, Any]], str] | None = None,
        max_length: int | None = None,
    ) -> None:
        self._format = _RowFormatter(
            path_or_dataset_id, column_mapping, tokenizer, split=split, answer_only_loss_mask=answer_only_loss_mask,
            seq_length=seq_length, padding=padding, truncation=truncation,
            use_hf_chat_template=use_hf_chat_template, start_of_turn_token=start_of_turn_token,
            prompt_template=prompt_template, prompt_func=prompt_func,
            completion_template=completion_template, completion_func=completion_func, max_length=max_length,
        )
        self.pad_token_id = self._format.pad_token_id
        self.source = path_or_dataset_id
        self.split = split
        self.paths = local_paths(path_or_dataset_id, split) or []
        self.local = bool(self.paths)
        self.limit = None if limit_dataset_samples is None else int(limit_dataset_samples)
        self.repeat_on_exhaustion = repeat_on_exhaustion
        self._state = self._start_of_pass(0)

    @staticmethod
    def _start_of_pass(epoch: int) -> dict[str, Any]:
        return {"pass": epoch, **start_position(), "row": 0, "yielded": 0}

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """Where the next row is: pass, file, byte offset and line (or the hub iterator's state)."""
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {**self._start_of_pass(0), **state}

    # ------------------------------------------------------------------ reading
    def _rows(self, state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(location, row, state after this row) from the saved position on."""
        if self.local:
            return local_rows(self.paths, state)
        return hub_rows(self.source, self.split, state)

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        me, readers = shard()
        while True:
            state = dict(self._state)
            rows = self._rows(state)
            for where, row, after in rows:
                if self.limit is not None and state["yielded"] >= self.limit:
                    break
                mine = state["row"] % readers == me
                state = {**after, "row": state["row"] + 1, "yielded": state["yielded"]}
                sample = self._format._tokenize(where, row) if mine else None
                if sample is None:
                    self._state = state
                    continue
                state["yielded"] += 1
                self._state = state  # set before handing the sample out: the state names the next row
                yield sample
            if state["yielded"] == 0:
                raise DatasetError(f"{self.source}: a whole pass produced no usable rows")
            self._format.row_limit.report()  # rows cut to the length limit: counted over the first pass, logged once
            self._state = self._start_of_pass(state["pass"] + 1)  # the next iteration (or resume) starts over
            if not self.repeat_on_exhaustion:
                return
