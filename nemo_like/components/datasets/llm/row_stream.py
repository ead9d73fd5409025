"""Rows read one at a time from local JSON/JSONL files or a hub dataset, each with the position after it.

Shared by the streamed datasets: the position (file index, byte offset and line, or the
hub iterator's own state) is what their ``state_dict()`` saves, so a resumed run reads
on from exactly the next row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import get_worker_info

from nemo_like.components.datasets.json_rows import DatasetError, is_local_data_path, read_json_rows

Row = tuple[str, dict[str, Any], dict[str, Any]]  # (location, row, position after the row)


def start_position() -> dict[str, Any]:
    """The position of the first row."""
    return {"file": 0, "offset": 0, "line": 0, "hub": None}


def shard() -> tuple[int, int]:
    """(index, count) of this reader among data-parallel ranks x dataloader workers."""
    from nemo_like.components.distributed.init import data_parallel_rank_and_size

    rank, world = data_parallel_rank_and_size()  # tensor/context-parallel peers read the same rows
    info = get_worker_info()
    if info is None:
        return rank, world
    return rank * info.num_workers + info.id, world * info.num_workers


def local_paths(path_or_dataset_id: str | Sequence[str], split: str | None) -> list[str] | None:
    """The checked local files to stream, or None for a hub dataset id."""
    if not is_local_data_path(path_or_dataset_id):
        return None
    paths = [path_or_dataset_id] if isinstance(path_or_dataset_id, str) else list(path_or_dataset_id)
    paths = [os.path.expanduser(p) for p in paths]
    for path in paths:
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: data file not found")
    if split and "[" in split:
        raise DatasetError(f"split {split!r}: slicing needs the whole file; use the map-style dataset")
    return paths


def local_rows(paths: list[str], position: dict[str, Any]) -> Iterator[Row]:
    """Rows of local files from ``position`` on."""
    for index in range(position["file"], len(paths)):
        path = paths[index]
        first = index == position["file"]
        offset, line = (position["offset"], position["line"]) if first else (0, 0)
        if path.endswith(".json"):  # a JSON list cannot be streamed; read it and walk its rows
            rows = read_json_rows(path)
            for number, row in rows[offset:]:
                offset += 1
                yield f"{path}:{number}", row, {**position, "file": index, "offset": offset, "line": number}
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
