"""A finished run as the advisor reads it: its metric records and the knobs of its saved config.

Why separate: the rules (``advisor_run``) take plain lists and settings, so they can be tested on
made-up curves; this module is the only one that touches a run folder's files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class RunSettings:
    """The run's knobs the advice changes, from its saved config (or its records when there is none)."""

    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    max_steps: int | None = None
    num_epochs: int | None = None
    global_batch_size: int | None = None
    peft_dim: int | None = None
    peft_dropout: float | None = None
    clip_grad_norm: float | None = None
    early_stopping: bool = False
    policy_gradient: bool = False  # a GRPO run: its loss is no error to drive down

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None, train: list[dict[str, Any]] | None = None) -> RunSettings:
        cfg = cfg or {}

        def get(path: str) -> Any:
            node: Any = cfg
            for part in path.split("."):
                if not isinstance(node, dict) or part not in node:
                    return None
                node = node[part]
            return node

        def number(path: str, kind: type = float) -> Any:
            v = get(path)
            try:
                return kind(v) if v is not None and not isinstance(v, bool) else None
            except (TypeError, ValueError):
                return None

        callbacks = get("callbacks") or []
        s = cls(lr=number("optimizer.lr"), weight_decay=number("optimizer.weight_decay"),
                warmup_steps=number("lr_scheduler.lr_warmup_steps", int), max_steps=number("step_scheduler.max_steps", int),
                num_epochs=number("step_scheduler.num_epochs", int),
                global_batch_size=number("step_scheduler.global_batch_size", int),
                peft_dim=number("peft.dim", int) if isinstance(get("peft"), dict) else None,
                peft_dropout=number("peft.dropout") if isinstance(get("peft"), dict) else None,
                clip_grad_norm=number("clip_grad_norm.max_norm"),
                early_stopping=any("EarlyStopping" in str(c.get("_target_", "")) for c in callbacks
                                   if isinstance(c, dict)),
                policy_gradient=isinstance(get("grpo"), dict))
        lrs = [float(r["lr"]) for r in train or [] if is_finite_number(r.get("lr"))]
        if s.lr is None and lrs:
            s.lr = max(lrs)
        return s


# ---------------------------------------------------------------------------------------------- reading

def read_records(path: str) -> list[dict[str, Any]]:
    """JSON objects, one per line; a later record of the same step (a resumed run) replaces the earlier one."""
    by_step: dict[int, dict[str, Any]] = {}
    unnumbered: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short when the run was killed
                continue
            if not isinstance(rec, dict):
                continue
            if isinstance(rec.get("step"), int):
                by_step[rec["step"]] = rec
            else:
                unnumbered.append(rec)
    return [by_step[k] for k in sorted(by_step)] + unnumbered


def read_run(run_dir: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``training.jsonl`` (required, not empty) and ``validation.jsonl`` (optional) of a run folder."""
    train_path = os.path.join(run_dir, "training.jsonl")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    if not os.path.isfile(train_path):
        raise FileNotFoundError(f"{train_path}: not found; give the checkpoint_dir of a run")
    train = [r for r in read_records(train_path) if "loss" in r]
    if not train:
        raise ValueError(f"{train_path}: no training steps recorded")
    val_path = os.path.join(run_dir, "validation.jsonl")
    val = read_records(val_path) if os.path.isfile(val_path) else []
    return train, val
