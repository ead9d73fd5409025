"""Helpers for the tune tests: the tiny SFT task of tests/configs/tiny_sft.yaml and a study run on it.

Each trial is a real `nemo-like finetune` process (a few seconds, mostly imports), so the test
modules share their studies through module-scoped fixtures and keep the trial counts small.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO, addition_rows, write_jsonl

TINY_SFT = REPO / "tests" / "configs" / "tiny_sft.yaml"


def tiny_env(root: Path, model_dir: str) -> dict[str, str]:
    """The environment tiny_sft.yaml reads, with one torch thread so reruns are bit-identical."""
    return {
        "TEST_MODEL_DIR": model_dir,
        "TEST_TRAIN_JSONL": write_jsonl(root / "data" / "train.jsonl", addition_rows(16)),
        "TEST_VAL_JSONL": write_jsonl(root / "data" / "validation.jsonl", addition_rows(6, offset=5)),
        "TEST_CKPT_DIR": str(root / "unused_ckpt"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


def write_tune(path: Path, tuning: dict[str, Any], recipe_text: str = "") -> Path:
    """A tune YAML: ``recipe_text`` (recipe sections written beside tuning:, Oumi style) and the tuning section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_text + yaml.safe_dump({"tuning": tuning}, sort_keys=False), encoding="utf-8")
    return path


def results(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "trials_results.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def val_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["val_loss"] for line in lines if line.strip()]


def steps_run(run_dir: Path) -> int:
    path = run_dir / "training.jsonl"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def param_table(out_dir: Path, names: list[str], state: str = "COMPLETE") -> list[tuple[str, ...]]:
    """The parameters of the counted trials of a study, in order."""
    return [tuple(row[n] for n in names) for row in results(out_dir) if row["state"] == state]


def env_without_pytest() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
