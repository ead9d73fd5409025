"""Read local JSON / JSONL files into rows, with one-line errors that name the file and the line.

Rows come with their location: ``file:line`` for JSON Lines, ``file[i]`` for the i-th
object of a JSON array (0-based, as ``jq`` counts). Bytes are decoded line by line, so
a file that is not UTF-8 (latin-1 text, a binary or compressed file) is reported at the
line and byte where it stops being UTF-8, not as a traceback from deep inside ``json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any


class DatasetError(ValueError):
    """A problem with the user's data; the message names the file and row."""


# Leading bytes of files that are often handed over by mistake for JSON text.
_MAGIC = (
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PAR1", "a Parquet file"),
    (b"ARROW1", "an Arrow file"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)
_UTF8_BOM = b"\xef\xbb\xbf"


def is_local_data_path(path_or_id: str | Sequence[str]) -> bool:
    """True for local data files (which must then exist), False for hub dataset ids (``org/name``).

    A name counts as a local path when it exists, ends in ``.json``/``.jsonl``/``.parquet``/``.csv``, starts with
    ``.``, ``/`` or ``~``, has more than one ``/`` (a hub id has one), or its first folder
    exists here, so a mistyped local path is reported as a missing file, not looked up on a hub.
    """
    paths = [path_or_id] if isinstance(path_or_id, str) else list(path_or_id)

    def local(p: str) -> bool:
        parts = p.replace(os.sep, "/").split("/")
        return (os.path.exists(p) or p.endswith((".json", ".jsonl", ".parquet", ".csv")) or p.startswith((".", "/", "~"))
                or len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0])))

    return all(local(p) for p in paths)


def check_data_file(path: str) -> str:
    """The expanded path of a readable, non-empty text file; a missing, empty or binary file is a DatasetError."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a folder; give a .json or .jsonl file")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: data file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DatasetError(f"{path}: empty file (no rows)")
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            raise DatasetError(f"{path}:1: {kind}, not UTF-8 JSON text; "
                               "give an uncompressed UTF-8 .json or .jsonl file")
    return path


def decode_line(path: str, lineno: int, offset: int, raw: bytes) -> str:
    """One raw line as text; ``offset`` is the line's first byte in the file (for the message)."""
    nul = raw.find(b"\x00")
    if nul >= 0:  # JSON text never holds a raw NUL byte: this is binary data
        raise DatasetError(f"{path}:{lineno}: binary data (a NUL byte at byte offset {offset + nul}), "
                           "not UTF-8 JSON text")
    if offset == 0 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte offset "
                           f"{offset + e.start}); save the file as UTF-8") from None


def _what(error: json.JSONDecodeError) -> str:
    """The decoder's complaint without its dangling "at" (it says "Invalid control character at")."""
    return error.msg.removesuffix(" at")


def parse_jsonl_line(path: str, lineno: int, offset: int, raw: bytes) -> dict[str, Any] | None:
    """The row on one raw JSON Lines line, or None for a blank line."""
    text = decode_line(path, lineno, offset, raw).rstrip("\r\n")
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{lineno}: invalid JSON ({_what(e)} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def _json_array_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        data = f.read()
    line_start = 0
    for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
        decode_line(path, lineno, line_start, raw)  # names the line and byte of the first bad byte
        line_start += len(raw)
    text = data.decode("utf-8-sig")
    if not text.strip():
        raise DatasetError(f"{path}: empty file (no rows)")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "; one object per line is JSON Lines: name the file .jsonl" if e.msg == "Extra data" else ""
        raise DatasetError(f"{path}:{e.lineno}: invalid JSON ({_what(e)} at column {e.colno}){hint}") from None
    if isinstance(parsed, dict):
        parsed = next((v for v in parsed.values() if isinstance(v, list)), [parsed])
    if not isinstance(parsed, list):
        raise DatasetError(f"{path}: expected a JSON array of objects, got {type(parsed).__name__}")
    if not parsed:
        raise DatasetError(f"{path}: the JSON array is empty (no rows)")
    rows = []
    for i, row in enumerate(parsed):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}[{i}]: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path}[{i}]", row))
    return rows


def read_json_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(location, row)`` pairs: JSONL read line by line (``file:line``), ``.json`` as an array (``file[i]``)."""
    path = check_data_file(path)
    if path.endswith(".json"):
        return _json_array_rows(path)
    rows: list[tuple[str, dict[str, Any]]] = []
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            row = parse_jsonl_line(path, lineno, offset, raw)
            offset += len(raw)
            if row is not None:
                rows.append((f"{path}:{lineno}", row))
    if not rows:
        raise DatasetError(f"{path}: empty file (only blank lines, no rows)")
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
