"""The rows of a dataset source as one memory-mapped Arrow table, each row keeping its file and line.

Why: tokenizing a million rows needs them in a form that ``datasets.map(num_proc=N)`` can
shard across processes without holding them in Python. Local JSON Lines are stored as their
raw lines (bytes, with line number and byte offset) and decoded inside the map, so a bad
line is still reported as ``file:line`` by the same reader as before (``json_rows``), and
rows keep their exact JSON shape (Arrow's schema inference would add null keys to every
object and merge unlike tool schemas). A ``.json`` array is parsed here, each object kept
as its JSON text, named ``file[i]``. Parquet and CSV files and hub ids are read by
``datasets`` with their own columns, named ``file[i]`` / ``dataset[i]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import xxhash

from nemo_like.components.datasets.local_splits import resolve_local_split
from nemo_like.components.datasets.json_rows import (
    DatasetError,
    check_data_file,
    is_local_data_path,
    parse_jsonl_line,
    read_json_rows,
    slice_split,
)

NATIVE_FORMATS = {".parquet": "parquet", ".csv": "csv"}  # read by datasets with their own columns
_BATCH_ROWS = 8192
_SCHEMA = pa.schema([("line", pa.binary()), ("file", pa.int32()), ("row", pa.int64()), ("offset", pa.int64())])


@dataclass
class RowSource:
    """Where rows come from, and what they are named by, before anything is read."""

    path_or_dataset_id: str | list[str]
    split: str | None
    paths: list[str] | None  # local files, or None for a hub id
    array: list[bool] = field(default_factory=list)  # per path: a JSON array (rows named file[i]) or not
    bounds: list[int] = field(default_factory=lambda: [0])  # first table index of each native file
    loaded: Any = field(default=None, repr=False)  # a hub dataset once loaded

    @classmethod
    def of(cls, path_or_dataset_id: str | Sequence[str], split: str | None = None) -> RowSource:
        source = path_or_dataset_id if isinstance(path_or_dataset_id, str) else list(path_or_dataset_id)
        if isinstance(source, str) and os.path.isdir(os.path.expanduser(source)):
            source = resolve_local_split(source, split)  # a local copy of a hub set: the split's files
        if not is_local_data_path(source):
            return cls(source, split, None)
        paths = [check_data_file(p) if _native_format(p) is None else _checked_native(p)
                 for p in ([source] if isinstance(source, str) else source)]
        kinds = {_native_format(p) or "json" for p in paths}
        if len(kinds) > 1:
            raise DatasetError(f"{source}: mixes file formats ({sorted(kinds)}); give files of one format")
        return cls(source, split, paths, [p.endswith(".json") for p in paths])

    @property
    def native(self) -> str | None:
        """The ``datasets`` builder for Parquet / CSV files, ``"hub"`` for a hub id, None for JSON text."""
        if self.paths is None:
            return "hub"
        return _native_format(self.paths[0])

    def fingerprint(self) -> str:
        """A hash of the rows' content: the local files' bytes, or the loaded hub dataset's own fingerprint."""
        digest = xxhash.xxh3_128()
        digest.update(json.dumps([self.path_or_dataset_id, self.split, self.native]).encode())
        if self.paths is None:
            digest.update(self._hub()._fingerprint.encode())
        for path in self.paths or []:
            digest.update(path.encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 23):
                    digest.update(block)
        return digest.hexdigest()

    def where(self, file: int, row: int) -> str:
        """The name of a row: ``file:line`` in JSON Lines, ``file[i]`` elsewhere, ``dataset[i]`` on a hub."""
        if self.paths is None:
            return f"{self.path_or_dataset_id}[{row}]"
        path = self.paths[file]
        return f"{path}[{row}]" if self.array[file] or self.native else f"{path}:{row}"

    def decode(self, batch: dict[str, list], i: int, index: int) -> tuple[int, int, dict[str, Any]]:
        """Row ``i`` of a ``datasets.map`` batch as (file, row number, the row as a dict); ``index`` is its table
        index. A JSON Lines row is parsed here, so a bad line is named as the reader names it."""
        if "line" in batch:
            file, row = batch["file"][i], batch["row"][i]
            if self.array[file]:
                return file, row, json.loads(batch["line"][i])
            return file, row, parse_jsonl_line(self.paths[file], row, batch["offset"][i], batch["line"][i])
        file, row = self.locate(batch[_NATIVE_ROW][i])  # the row's place before any slice or shuffle
        return file, row, {k: v[i] for k, v in batch.items() if k != _NATIVE_ROW}

    def locate(self, index: int) -> tuple[int, int]:
        """(file, row within it) of a native table's row ``index`` (files are concatenated in order)."""
        file = max(j for j, start in enumerate(self.bounds) if start <= index)
        return file, index - self.bounds[file]

    def load(self, scratch: Path) -> Any:
        """The rows as a ``datasets.Dataset`` (memory-mapped), sliced by ``split`` for local files."""
        if self.paths is None:
            return self._hub()
        if self.native:
            parts = [_read_native(self.native, p, scratch) for p in self.paths]
            self.bounds = [sum(len(t) for t in parts[:j]) for j in range(len(parts))]
            table = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            table = table.add_column(_NATIVE_ROW, np.arange(len(table), dtype=np.int64))
        else:
            path = scratch / "rows.arrow"
            _write_json_rows(self.paths, path)
            table = datasets.Dataset.from_file(str(path))
        span = slice_split(range(len(table)), self.split)
        if not span:
            raise DatasetError(f"{self.path_or_dataset_id}: split {self.split!r} selects no rows")
        return table if len(span) == len(table) else table.select(span)


    def _hub(self) -> Any:
        """The hub dataset, loaded once (``datasets`` keeps its own download cache)."""
        if self.loaded is None:
            try:
                self.loaded = datasets.load_dataset(self.path_or_dataset_id, split=self.split or "train")
            except Exception as e:
                raise DatasetError(f"{self.path_or_dataset_id}: cannot load this dataset ({type(e).__name__}); "
                                   "on an offline machine give a local JSON/JSONL path") from e
        return self.loaded


_NATIVE_ROW = "__nemo_like_row"  # a Parquet/CSV row's index in the files as read, kept through slices


def _native_format(path: str) -> str | None:
    return NATIVE_FORMATS.get(os.path.splitext(path)[1].lower())


def _read_native(builder: str, path: str, scratch: Path) -> Any:
    """A Parquet or CSV file through ``datasets``; a file it cannot read is one line naming the file."""
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=str(scratch / "hf"))
    except Exception as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatasetError(f"{path}: cannot read this {builder.capitalize()} file ({type(e).__name__}: {why})") from None


def _checked_native(path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: data file not found")
    if os.path.getsize(path) == 0:
        raise DatasetError(f"{path}: empty file (no rows)")
    return path


def _write_json_rows(paths: list[str], out: Path) -> None:
    """Every non-blank line of JSONL files (raw bytes, line number, byte offset), or every object of a JSON array."""
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, _SCHEMA) as writer:
        for file, path in enumerate(paths):
            if path.endswith(".json"):
                located = read_json_rows(path)  # parsed whole, errors named by read_json_rows
                lines = [json.dumps(obj).encode() for _, obj in located]
                if lines:
                    writer.write_batch(pa.record_batch(
                        [pa.array(lines, pa.binary()), pa.array(np.full(len(lines), file, np.int32)),
                         pa.array(np.arange(len(lines), dtype=np.int64)), pa.array(np.zeros(len(lines), np.int64))],
                        schema=_SCHEMA))
                continue
            found = 0
            for batch in _jsonl_batches(path, file):
                writer.write_batch(batch)
                found += batch.num_rows
            if not found:
                raise DatasetError(f"{path}: empty file (only blank lines, no rows)")


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True  # what bytes.strip() removes
_BLOCK_BYTES = 1 << 25


def _jsonl_batches(path: str, file: int) -> Any:
    """The non-blank lines of a JSON Lines file as record batches, found with numpy a block at a time (a Python loop
    over a million lines costs about a second); each line keeps its newline, as reading the file line by line does."""
    base, lineno = 0, 0
    with open(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(_BLOCK_BYTES)
            data = rest + block
            if not data:
                return
            view = np.frombuffer(data, dtype=np.uint8)
            ends = np.flatnonzero(view == 10) + 1
            if block and len(ends) == 0:  # one line longer than a block: read on
                rest = data
                continue
            complete = int(ends[-1]) if block else len(data)
            if not block and (len(ends) == 0 or ends[-1] != len(data)):
                ends = np.append(ends, len(data))  # the last line has no newline
            bounds = np.concatenate(([0], ends)).astype(np.int64)  # line k is data[bounds[k]:bounds[k + 1]]
            filled = ~_WHITESPACE[view[bounds[:-1]]]  # a line that starts with a non-space byte is not blank
            for k in np.flatnonzero(~filled).tolist():  # the others (few) are looked at one by one
                filled[k] = bool(data[bounds[k]:bounds[k + 1]].strip())
            lines = pa.BinaryArray.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(bounds.astype(np.int32)),
                                                                         pa.py_buffer(data)])
            keep = np.flatnonzero(filled)
            if len(keep):
                yield pa.record_batch([lines if len(keep) == len(lines) else lines.filter(pa.array(filled)),
                                       pa.array(np.full(len(keep), file, np.int32)),
                                       pa.array(lineno + 1 + keep.astype(np.int64)),
                                       pa.array(base + bounds[keep])], schema=_SCHEMA)
            lineno += len(ends)
            base += complete
            rest = data[complete:]
            if not block:
                return
