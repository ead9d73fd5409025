"""Reading a finished (or running) training directory: its metric files and its recipe."""

from __future__ import annotations

import json
import os
from typing import Any


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line of a killed run is skipped, any other bad line names its row."""
    if not os.path.exists(path):
        return []
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}: row {number} is not JSON ({err.msg})") from err
    return records


def check_run_dir(run_dir: str) -> None:
    if not os.path.isfile(os.path.join(run_dir, "training.jsonl")):
        raise FileNotFoundError(f"{run_dir}: no training.jsonl here; pass a run's checkpoint.checkpoint_dir")


def run_config(run_dir: str) -> dict[str, Any]:
    """The recipe saved with the newest checkpoint (``LATEST``, else any step directory); {} without one."""
    import yaml

    names: list[str] = []
    latest = os.path.join(run_dir, "LATEST")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as handle:
            names.append(handle.read().strip())
    if os.path.isdir(run_dir):
        names += sorted((n for n in os.listdir(run_dir) if n.startswith("epoch_")), reverse=True)
    for name in names:
        path = os.path.join(run_dir, name, "config.yaml")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return yaml.safe_load(handle) or {}
    return {}
