"""A finished run's objective values, read from the files it logged.

The runs write one JSON object a line: ``training.jsonl`` (loss, tps, ... per step) and
``validation.jsonl`` (val_loss and a method's held-out scores per validation). ``val_loss`` is
by default the last validation's, the loss of the model the run ends with (and the one its
checkpoint holds); ``reduce: best`` takes the best validation instead.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Objective:
    """A logged metric and its direction; ``reduce``: the run's ``last`` value, or its ``best`` one."""

    metric: str
    direction: str = "minimize"
    reduce: str = "last"



class MissingMetric(ValueError):
    """The run did not log the objective's metric: every trial would miss it, so the study stops."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log; a line cut short by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def steps_run(run_dir: Path) -> int:
    """Training steps this run took (one training.jsonl record each)."""
    return len(read_jsonl(run_dir / "training.jsonl"))


def objective_value(run_dir: Path, objective: Objective) -> float:
    """``train_loss``: the last step's loss; ``tps``: the median over steps after the first (warm-up);
    any other name: its values in validation.jsonl (else training.jsonl), the last or the best."""
    train = read_jsonl(run_dir / "training.jsonl")
    if objective.metric == "tps":
        values = [float(r["tps"]) for r in train[1:] or train if "tps" in r]
        if not values:
            raise MissingMetric("tps is not in training.jsonl")
        return float(statistics.median(values))
    if objective.metric == "train_loss":
        values = [float(r["loss"]) for r in train if "loss" in r]
    else:
        val = read_jsonl(run_dir / "validation.jsonl")
        values = [float(r[objective.metric]) for r in val if objective.metric in r]
        values = values or [float(r[objective.metric]) for r in train if objective.metric in r]
        if not values:
            have = sorted({k for r in val + train[-1:] for k in r} - {"step", "epoch"})
            raise MissingMetric(f"'{objective.metric}' is not logged by the run (have: {', '.join(have)})")
    if not values:
        raise MissingMetric(f"'{objective.metric}': the run logged no training step")
    if objective.reduce == "last":
        return values[-1]
    finite = [v for v in values if math.isfinite(v)] or values
    return min(finite) if objective.direction == "minimize" else max(finite)
