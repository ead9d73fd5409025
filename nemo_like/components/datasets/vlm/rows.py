"""The rows of a VLM data source, each with its name (``file:line``) and the folder its images are read from.

Why a table and not a list of decoded rows: images are decoded only when an item is read,
so a large set never holds its images in memory. Local JSON / JSONL files are read by
``json_rows`` (rows named ``file:line``); Parquet / CSV files and hub ids are read by
``datasets`` with image columns left undecoded (``{"bytes", "path"}``), rows named ``file[i]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nemo_like.components.datasets.json_rows import DatasetError, is_local_data_path, read_json_rows, slice_split
from nemo_like.components.datasets.local_splits import limit_within_split, resolve_local_split, split_name

_NATIVE = {".parquet": "parquet", ".csv": "csv"}


class RowTable:
    """Rows by index: ``where(i)``, ``row(i)`` and ``root(i)`` (the folder relative image paths start from)."""

    def __init__(self, path_or_dataset_id: str | Sequence[str], split: str | None = None,
                 limit_dataset_samples: int | None = None, image_root: str | None = None) -> None:
        limit = limit_within_split(split, limit_dataset_samples)
        self.image_root = os.path.expanduser(image_root) if image_root is not None else None
        self._rows: list[tuple[str, dict[str, Any], str | None]] = []
        self._hub: Any = None
        self._name = ""
        source = path_or_dataset_id if isinstance(path_or_dataset_id, str) else list(path_or_dataset_id)
        if isinstance(source, str) and os.path.isdir(os.path.expanduser(source)):
            source = resolve_local_split(source, split)
            split = split if split and "[" in split else None  # the folder's split file is the whole split
        paths = [source] if isinstance(source, str) else source
        if is_local_data_path(paths) and not any(p.endswith(tuple(_NATIVE)) for p in paths):
            for path in paths:
                folder = self.image_root or os.path.dirname(os.path.abspath(os.path.expanduser(path)))
                self._rows += [(where, row, folder) for where, row in read_json_rows(path)]
            self._rows = slice_split(self._rows, split)
            if limit is not None:
                self._rows = self._rows[:limit]
        else:
            self._load_with_datasets(paths, split, limit)
        if len(self) == 0:
            raise DatasetError(f"{path_or_dataset_id}: no rows (split {split!r})")

    def _load_with_datasets(self, paths: list[str], split: str | None, limit: int | None) -> None:
        import datasets

        if is_local_data_path(paths):
            builder = _NATIVE.get(os.path.splitext(paths[0])[1], "json")
            ds = datasets.load_dataset(builder, data_files=[os.path.expanduser(p) for p in paths], split="train")
            if split and "[" in split:
                ds = ds.select(slice_split(list(range(len(ds))), split))
            self._name = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1})"
        else:
            ds = datasets.load_dataset(paths[0], split=split or "train")
            self._name = f"{paths[0]}:{split_name(split) or 'train'}"
        for column, feature in ds.features.items():  # images stay bytes until an item is read
            if isinstance(feature, datasets.Image) and feature.decode:
                ds = ds.cast_column(column, datasets.Image(decode=False))
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        self._hub = ds

    def __len__(self) -> int:
        return len(self._hub) if self._hub is not None else len(self._rows)

    def where(self, index: int) -> str:
        return f"{self._name}[{index}]" if self._hub is not None else self._rows[index][0]

    def row(self, index: int) -> dict[str, Any]:
        return dict(self._hub[index]) if self._hub is not None else self._rows[index][1]

    def root(self, index: int) -> str | None:
        return self.image_root if self._hub is not None else self._rows[index][2]
