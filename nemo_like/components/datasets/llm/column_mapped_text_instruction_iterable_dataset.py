"""The streaming variant of the column-mapped instruction dataset: rows are read and tokenized as they are used.

Why: a large JSONL file (or a hub dataset with ``streaming=True``) should not be read
whole before training starts. The dataset remembers where it is (the byte offset in a
local file, or the hub iterator's own state), and ``state_dict()`` / ``load_state_dict()``
let a ``StatefulDataLoader`` resume at exactly the next row, so a resumed run sees the
same next batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from nemo_like.components.datasets.json_rows import DatasetError, is_local_data_path, read_json_rows
from nemo_like.components.datasets.llm.column_mapped_text_instruction_dataset import (
    ColumnMappedTextInstructionDataset,
)


class _RowFormatter(ColumnMappedTextInstructionDataset):
    """The column-mapped tokenization of one row, without reading any rows up front."""

    def _load_samples(self, path_or_dataset_id: str | Sequence[str], split: str | None, limit: int | None) -> None:
        self.samples, self.locations = [], []


def _shard() -> tuple[int, int]:
    """(index, count) of this reader among data-parallel ranks x dataloader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    if info is None:
        return rank, world
    return rank * info.num_workers + info.id, world * info.num_workers


class ColumnMappedTextInstructionIterableDataset(IterableDataset):
    """Column-mapped instruction rows streamed from local JSON/JSONL files or a hub dataset.

    Same columns, masking and errors as :class:`ColumnMappedTextInstructionDataset`;
    a bad row stops iteration naming its file and line. ``limit_dataset_samples`` caps
    the samples of one pass; with ``repeat_on_exhaustion`` the data starts over (a new
    pass) instead of ending. Rows are dealt round-robin over data-parallel ranks and
    dataloader workers.
    """

    def __init__(
        self,
        path_or_dataset_id: str | Sequence[str],
        column_mapping: dict[str, str],
        tokenizer: Any,
        split: str | None = None,
        answer_only_loss_mask: bool = True,
        seq_length: int | None = None,
        padding: str | bool = "do_not_pad",
        truncation: str | bool = "do_not_truncate",
        limit_dataset_samples: int | None = None,
        use_hf_chat_template: bool = False,
        start_of_turn_token: str | None = None,
        repeat_on_exhaustion: bool = True,
    ) -> None:
        self._format = _RowFormatter(
            path_or_dataset_id, column_mapping, tokenizer, split=split, answer_only_loss_mask=answer_only_loss_mask,
            seq_length=seq_length, padding=padding, truncation=truncation,
            use_hf_chat_template=use_hf_chat_template, start_of_turn_token=start_of_turn_token,
        )
        self.pad_token_id = self._format.pad_token_id
        self.source = path_or_dataset_id
        self.split = split
        self.local = is_local_data_path(path_or_dataset_id)
        if self.local:
            self.paths = [path_or_dataset_id] if isinstance(path_or_dataset_id, str) else list(path_or_dataset_id)
            self.paths = [os.path.expanduser(p) for p in self.paths]
            for path in self.paths:
                if not os.path.isfile(path):
                    raise DatasetError(f"{path}: data file not found")
            if split and "[" in split:
                raise DatasetError(f"split {split!r}: slicing needs the whole file; use the map-style dataset")
        self.limit = None if limit_dataset_samples is None else int(limit_dataset_samples)
        self.repeat_on_exhaustion = repeat_on_exhaustion
        self._state = self._start_of_pass(0)

    @staticmethod
    def _start_of_pass(epoch: int) -> dict[str, Any]:
        return {"pass": epoch, "file": 0, "offset": 0, "line": 0, "row": 0, "yielded": 0, "hub": None}

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """Where the next row is: pass, file, byte offset and line (or the hub iterator's state)."""
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {**self._start_of_pass(0), **state}

    # ------------------------------------------------------------------ reading
    def _local_rows(self, state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(location, row, state after this row) from the saved position on."""
        for index in range(state["file"], len(self.paths)):
            path = self.paths[index]
            first = index == state["file"]
            offset, line = (state["offset"], state["line"]) if first else (0, 0)
            if path.endswith(".json"):  # a JSON list cannot be streamed; read it and walk its rows
                rows = read_json_rows(path)
                for number, row in rows[offset:]:
                    offset += 1
                    yield f"{path}:{number}", row, {**state, "file": index, "offset": offset, "line": number}
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                while raw := f.readline():
                    line += 1
                    offset = f.tell()
                    if not raw.strip():
                        continue
                    try:
                        row = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise DatasetError(f"{path}:{line}: invalid JSON ({type(e).__name__})") from None
                    if not isinstance(row, dict):
                        raise DatasetError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
                    yield f"{path}:{line}", row, {**state, "file": index, "offset": offset, "line": line}

    def _hub_rows(self, state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        try:
            import datasets

            stream = datasets.load_dataset(self.source, split=self.split or "train", streaming=True)
        except Exception as e:
            raise DatasetError(f"{self.source}: cannot stream this dataset ({type(e).__name__}); "
                               "on an offline machine give a local JSONL path") from e
        if state["hub"] is not None:
            stream.load_state_dict(state["hub"])
        number = state["line"]
        for row in stream:
            number += 1
            yield f"{self.source}[{number - 1}]", dict(row), {**state, "line": number, "hub": stream.state_dict()}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        me, readers = _shard()
        while True:
            state = dict(self._state)
            rows = self._local_rows(state) if self.local else self._hub_rows(state)
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
            self._state = self._start_of_pass(state["pass"] + 1)  # the next iteration (or resume) starts over
            if not self.repeat_on_exhaustion:
                return
