"""Read local JSON / JSONL files into rows, with errors that name the file and line."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any


class DatasetError(ValueError):
    """A problem with the user's data; the message names the file and row."""


def is_local_data_path(path_or_id: str | Sequence[str]) -> bool:
    """True for local JSON/JSONL paths (which must then exist), False for hub dataset ids."""
    paths = [path_or_id] if isinstance(path_or_id, str) else list(path_or_id)
    return all(
        os.path.exists(p) or p.endswith((".json", ".jsonl")) or p.startswith((".", "/", "~")) for p in paths
    )


def read_json_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    """Return ``(line_number, row)`` pairs; JSONL is read line by line, ``.json`` as a list of objects."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: data file not found")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            for i, row in enumerate(data):
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
                rows.append((i + 1, row))
            return rows
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


_SLICE = re.compile(r"^(?P<name>[\w.-]+)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def slice_split(rows: list, split: str | None) -> list:
    """Apply HF-style split slicing (``train[:100]``, ``train[90%:]``) to rows from a local file."""
    if not split:
        return rows
    m = _SLICE.match(split.replace(" ", ""))
    if not m:
        return rows

    def bound(v: str | None) -> int | None:
        if v is None:
            return None
        if v.endswith("%"):
            return round(len(rows) * int(v[:-1]) / 100)
        return int(v)

    return rows[bound(m["start"]) : bound(m["stop"])]
