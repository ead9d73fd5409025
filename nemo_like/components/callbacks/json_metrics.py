"""One JSON file that sums a run up: every step and validation, the best validation, how it ended.

``training.jsonl`` grows line by line for tools that follow a run; this file is the whole
picture in one read (rewritten after each validation and at the end) for scripts and reports.
"""

from __future__ import annotations

import json
import os
from typing import Any

from nemo_like.components.callbacks.callback import Callback, TrainState


class JSONMetricsLogger(Callback):
    """Writes ``path`` (relative paths land in the run directory; default ``metrics.json``)."""

    def __init__(self, path: str = "metrics.json", monitor: str = "val_loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"JSONMetricsLogger.mode: {mode!r} is not 'min' or 'max'")
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.finished = False

    def on_train_start(self, state: TrainState) -> None:
        self.path = self.path if os.path.isabs(self.path) else os.path.join(state.run_dir, self.path)

    def on_validation_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self.write(state)

    def on_train_end(self, state: TrainState) -> None:
        self.finished = True
        self.write(state)

    def summary(self, state: TrainState) -> dict[str, Any]:
        scored = [r for r in state.val_history if isinstance(r.get(self.monitor), (int, float))]
        pick = min if self.mode == "min" else max
        best = pick(scored, key=lambda r: r[self.monitor]) if scored else None
        return {
            "finished": self.finished,
            "steps_done": (state.train_history[-1]["step"] + 1) if state.train_history else 0,
            "max_steps": state.max_steps,
            "stopped_early": state.stop_reason,
            "best": {"step": best["step"], self.monitor: best[self.monitor]} if best else None,
            "last_train": state.train_history[-1] if state.train_history else None,
            "train": state.train_history,
            "validation": state.val_history,
        }

    def write(self, state: TrainState) -> None:
        if not state.is_main:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.summary(state), handle, indent=1)
        os.replace(tmp, self.path)
