"""Helpers the task YAMLs name with ``!function``: local data only, never the hub.

lm-eval imports this file by path from the YAML's folder, so it must not import the rest of the
package (a user's ``lm_eval --include_path`` may run where ``nemo_like`` is not importable).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The repository root: data/ sits beside the package in a checkout.
_REPO = Path(__file__).resolve().parents[2]


def _locate(data_file: str) -> Path:
    """A relative path is tried from the working directory, then from the repository root."""
    path = Path(os.path.expanduser(data_file))
    if path.is_absolute() or path.exists():
        return path
    return _REPO / path


def load_jsonl_split(data_file: str, split: str = "test", **_: Any) -> Any:
    """Read one JSONL file into a ``DatasetDict`` with a single ``split`` (rows in file order).

    lm-eval passes the task's ``dataset_kwargs`` and ``metadata`` here; unknown keys are ignored.
    """
    import datasets

    path = _locate(data_file)
    if not path.is_file():
        raise FileNotFoundError(f"dataset_kwargs.data_file: {data_file} not found (looked in {Path.cwd()} and {_REPO})")
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
