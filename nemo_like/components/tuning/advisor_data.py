"""Row counts and rough token lengths of a local data set, without tokenizing all of it.

Why: the guide's ranges depend on the number of training rows, and packing and step counts on
how long rows are. Counting JSON Lines is a line count; Parquet keeps its row count in the file
footer; only a sample of rows is read to estimate tokens per row.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nemo_like.components.datasets.json_rows import (
    DatasetError,
    check_data_file,
    parse_jsonl_line,
    read_json_rows,
)
from nemo_like.components.datasets.local_splits import DATA_SUFFIXES, resolve_local_split

CHARS_PER_TOKEN = 4.0  # a usual ratio for English text under BPE tokenizers; only an estimate


@dataclass
class DataStats:
    """What the advisor knows about a data set: its files, rows and (estimated) tokens per row."""

    path: str
    files: list[str]
    rows: int
    sampled: int = 0
    tokens_per_row: float | None = None
    tokens_p95: int | None = None
    token_source: str = ""


def data_files(path: str, split: str = "train") -> list[str]:
    """The files holding ``split``: the file itself, or the split's files in a folder (hub-style names)."""
    resolved = resolve_local_split(os.path.expanduser(path), split)
    files = [resolved] if isinstance(resolved, str) else list(resolved)
    for f in files:
        if not os.path.exists(f):
            raise DatasetError(f"{f}: data file not found")
        if not f.lower().endswith(DATA_SUFFIXES):
            raise DatasetError(f"{f}: unknown format; give a {'/'.join(DATA_SUFFIXES)} file or a folder of them")
    return files


def _jsonl_rows(path: str) -> int:
    """Non-blank lines, counted in binary chunks: a 100K-row file takes milliseconds."""
    count = 0
    with open(check_data_file(path), "rb") as f:
        for line in f:
            if line.strip():
                count += 1
    return count


def _csv_reader(path: str) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        yield from csv.DictReader(f)


def count_file_rows(path: str) -> int:
    """Rows of one file by its format (JSONL lines, JSON array items, Parquet footer, CSV records)."""
    lower = path.lower()
    if lower.endswith(".jsonl"):
        return _jsonl_rows(path)
    if lower.endswith(".json"):
        return len(read_json_rows(path))
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        return int(pq.read_metadata(path).num_rows)
    return sum(1 for _ in _csv_reader(path))


def count_rows(path: str, split: str = "train") -> tuple[list[str], int]:
    """The split's files and their total row count."""
    files = data_files(path, split)
    return files, sum(count_file_rows(f) for f in files)


def sample_rows(files: list[str], limit: int = 200) -> list[dict[str, Any]]:
    """Up to ``limit`` rows from the start of the files, parsed as the datasets parse them."""
    rows: list[dict[str, Any]] = []
    for path in files:
        want = limit - len(rows)
        if want <= 0:
            break
        lower = path.lower()
        if lower.endswith(".jsonl"):
            offset = 0
            with open(check_data_file(path), "rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    row = parse_jsonl_line(path, lineno, offset, raw)
                    offset += len(raw)
                    if row is not None:
                        rows.append(row)
                        if len(rows) >= limit:
                            break
        elif lower.endswith(".json"):
            rows += [row for _, row in read_json_rows(path)[:want]]
        elif lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=want):
                rows += batch.to_pylist()[:want]
                break
        else:
            for i, row in enumerate(_csv_reader(path)):
                if i >= want:
                    break
                rows.append(dict(row))
    return rows


def row_text(value: Any) -> str:
    """All the text of a row (strings in nested lists and dicts, e.g. chat ``messages``), joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(row_text(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return "\n".join(row_text(v) for v in value)
    return ""


def token_lengths(rows: list[dict[str, Any]], count_tokens: Callable[[str], int] | None = None) -> list[int]:
    """Tokens per row: the given counter (a tokenizer), else characters / 4."""
    texts = [row_text(r) for r in rows]
    if count_tokens is not None:
        return [count_tokens(t) for t in texts]
    return [max(1, math.ceil(len(t) / CHARS_PER_TOKEN)) for t in texts]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; values need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def describe_data(path: str, split: str = "train", sample: int = 200,
                  count_tokens: Callable[[str], int] | None = None) -> DataStats:
    """Rows of the split and, from a sample of ``sample`` rows (0: skip), tokens per row."""
    files, rows = count_rows(path, split)
    if rows == 0:
        raise DatasetError(f"{path}: no rows")
    stats = DataStats(path=path, files=files, rows=rows)
    if sample > 0:
        lengths = token_lengths(sample_rows(files, sample), count_tokens)
        if lengths:
            stats.sampled = len(lengths)
            stats.tokens_per_row = sum(lengths) / len(lengths)
            stats.tokens_p95 = int(math.ceil(percentile(lengths, 95)))
            stats.token_source = "tokenizer" if count_tokens is not None else f"characters / {CHARS_PER_TOKEN:g}"
    return stats
