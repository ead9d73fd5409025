"""Rows read one at a time from local JSON/JSONL files or a hub dataset, each with the position after it.

Shared by the streamed datasets: the position (file index, byte offset and line, or the
hub iterator's own state) is what their ``state_dict()`` saves, so a resumed run reads
on from exactly the next row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import get_worker_info

from nemo_like.components.datasets.json_rows import (
    DatasetError,
    check_data_file,
    is_local_data_path,
    parse_jsonl_line,
    read_json_rows,
)
from nemo_like.components.datasets.local_splits import resolve_local_split
from nemo_like.components.distributed.init import data_parallel_rank_and_size

Row = tuple[str, dict[str, Any], dict[str, Any]]  # (location, row, position after the row)


def start_position() -> dict[str, Any]:
    """The position of the first row."""
    return {"file": 0, "offset": 0, "line": 0, "hub": None}


def shard() -> tuple[int, int]:
    """(index, count) of this reader among data-parallel ranks x dataloader workers."""
    rank, world = data_parallel_rank_and_size()  # tensor/context-parallel peers read the same rows
    info = get_worker_info()
    if info is None:
        return rank, world
    return rank * info.num_workers + info.id, world * info.num_workers


def local_paths(path_or_dataset_id: str | Sequence[str], split: str | None) -> list[str] | None:
    """The checked local files to stream (present, not empty, text), or None for a hub dataset id."""
    if isinstance(path_or_dataset_id, str) and os.path.isdir(os.path.expanduser(path_or_dataset_id)):
        path_or_dataset_id = resolve_local_split(path_or_dataset_id, split)  # a local copy of a hub set's splits
    if not is_local_data_path(path_or_dataset_id):
        return None
    paths = [path_or_dataset_id] if isinstance(path_or_dataset_id, str) else list(path_or_dataset_id)
    paths = [check_data_file(p) for p in paths]
    if split and "[" in split:
        raise DatasetError(f"split {split!r}: slicing needs the whole file; use the map-style dataset")
    return paths


def local_rows(paths: list[str], position: dict[str, Any]) -> Iterator[Row]:
    """Rows of local files from ``position`` on (``offset``: a byte in JSONL, a row index in a JSON array)."""
    for index in range(position["file"], len(paths)):
        path = paths[index]
        first = index == position["file"]
        offset, line = (position["offset"], position["line"]) if first else (0, 0)
        if path.endswith(".json"):  # a JSON array cannot be streamed; read it and walk its rows
            rows = read_json_rows(path)
            for where, row in rows[offset:]:
                offset += 1
                yield where, row, {**position, "file": index, "offset": offset, "line": offset}
            continue
        with open(path, "rb") as f:
            f.seek(offset)
            while raw := f.readline():
                line += 1
                row = parse_jsonl_line(path, line, offset, raw)
                offset = f.tell()
                if row is not None:
                    yield f"{path}:{line}", row, {**position, "file": index, "offset": offset, "line": line}


def hub_rows(source: str, split: str | None, position: dict[str, Any]) -> Iterator[Row]:
    """Rows of a hub dataset streamed with ``datasets``, resuming from the iterator state in ``position``."""
    try:
        import datasets

        stream = datasets.load_dataset(source, split=split or "train", streaming=True)
    except Exception as e:
        raise DatasetError(f"{source}: cannot stream this dataset ({type(e).__name__}); "
                           "on an offline machine give a local JSONL path") from e
    if position["hub"] is not None:
        stream.load_state_dict(position["hub"])
    number = position["line"]
    for row in stream:
        number += 1
        yield f"{source}[{number - 1}]", dict(row), {**position, "line": number, "hub": stream.state_dict()}
