"""A hub dataset's split read from a local copy: a file, a list of files, or a folder of split files.

Why: recipes name hub datasets with a split (``train``, ``validation``, ``train[:256]``).
On a machine without a hub the same recipe points ``dataset_name`` at a local copy. A
single file (or a list) holds the split's rows and the split only slices them; a folder
holds one file per split, named as hubs name them (``train.jsonl``,
``validation-00000-of-00001.parquet``, also in sub-folders such as ``plain_text/``), and the
split's name picks the files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

from nemo_like.components.datasets.json_rows import DatasetError

logger = logging.getLogger("nemo_like")

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_COMMON_SPLITS = ("train", "validation", "valid", "val", "dev", "test")
_SPLIT = re.compile(r"^\s*(?P<name>[\w.-]+)\s*(?P<slice>\[.*\])?\s*$")


def split_name(split: str | None) -> str | None:
    """``train[:64]`` -> ``train``; a split without a slice is its own name."""
    if split is None:
        return None
    m = _SPLIT.match(split)
    return m["name"] if m else split


def _data_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(DATA_SUFFIXES) and not f.startswith(".")]
    return found


def _named_for(path: str, name: str) -> bool:
    base = os.path.basename(path).lower()
    return base == name or re.match(rf"^{re.escape(name)}(?![A-Za-z0-9])", base) is not None


def resolve_local_split(path_or_id: str | Sequence[str], split: str | None) -> str | list[str]:
    """The files that hold ``split`` when ``path_or_id`` is a folder; anything else is returned as it is.

    In a folder, the files named for the split are taken (in sorted order). A folder whose
    files are named for no common split (``train``, ``validation``, ``test``, ...) is one
    split: all its files are taken. A folder with split files but none for this split is an
    error naming the folder, the split and the files it has.
    """
    if not isinstance(path_or_id, str):
        return list(path_or_id)
    folder = os.path.expanduser(path_or_id)
    if not os.path.isdir(folder):
        return path_or_id
    files = _data_files(folder)
    if not files:
        raise DatasetError(f"{path_or_id}: the folder holds no {'/'.join(DATA_SUFFIXES)} file")
    name = (split_name(split) or "train").lower()
    chosen = [f for f in files if _named_for(f, name)]
    if chosen:
        return chosen
    if not any(_named_for(f, common) for f in files for common in _COMMON_SPLITS):
        return files
    have = ", ".join(os.path.relpath(f, folder) for f in files[:6]) + (", ..." if len(files) > 6 else "")
    raise DatasetError(f"{path_or_id}: no file for split {name!r} in this folder (it has {have}); "
                       f"name one {name}.jsonl or {name}-*.parquet")


def limit_within_split(split: str | None, limit: int | None) -> int | None:
    """``limit_dataset_samples`` as recipes mean it: the first N rows of the split, unless the split is sliced."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DatasetError(f"dataset.limit_dataset_samples: expected a positive integer, got {limit!r}")
    if split and "[" in split:
        logger.warning("dataset.limit_dataset_samples: the split %r is already sliced; the limit is not applied",
                       split)
        return None
    return limit
