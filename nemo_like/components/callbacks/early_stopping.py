"""Stop a run once the monitored metric has not improved for ``patience`` checks.

Watching validation loss, it ends an overfitting or diverging run at the first sign that
more steps will not help, while ``LOWEST_VAL`` keeps pointing at the best checkpoint.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from nemo_like.components.callbacks.callback import Callback, TrainState
from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")


class EarlyStopping(Callback):
    """``monitor`` (default ``val_loss``) must beat the best value so far by more than ``threshold``.

    ``mode`` is ``min`` (losses) or ``max`` (accuracies). A value that is not finite stops at
    once. ``monitor`` may name a validation key (checked at each validation) or a train-step key
    such as ``loss`` (checked at each step). The count restarts from the logged validations when a
    run is resumed, so a resumed run stops where the uninterrupted one would have.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, threshold: float = 0.0, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping.mode: {mode!r} is not 'min' or 'max'")
        if int(patience) < 1:
            raise ValueError(f"EarlyStopping.patience: {patience} must be at least 1")
        if float(threshold) < 0:
            raise ValueError(f"EarlyStopping.threshold: {threshold} must be >= 0")
        self.monitor = monitor
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.mode = mode
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self._seen_in_train = False

    # ------------------------------------------------------------------ the rule
    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.threshold
        return value > self.best + self.threshold

    def update(self, value: float, step: int) -> str | None:
        """Take one observation; return the reason to stop, or None."""
        if not math.isfinite(value):
            return f"{self.monitor} is {value} at step {step}"
        if self.improved(value):
            self.best, self.best_step, self.wait = value, step, 0
            return None
        self.wait += 1
        if self.wait >= self.patience:
            return (f"{self.monitor} has not improved on {self.best:.4f} (step {self.best_step}) for "
                    f"{self.wait} checks (patience {self.patience}, threshold {self.threshold:g}); "
                    f"last {value:.4f} at step {step}")
        return None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, state: TrainState) -> None:
        for record in state.val_history:  # resuming: replay what was already seen
            if self.monitor in record:
                self.update(float(record[self.monitor]), int(record["step"]))

    def on_train_step_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.monitor in metrics:
            self._seen_in_train = True
            self._observe(state, float(metrics[self.monitor]), int(metrics["step"]))

    def on_validation_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.monitor in record:
            self._observe(state, float(record[self.monitor]), int(record["step"]))
        elif not self._seen_in_train:
            keys = sorted({*record, *(state.train_history[-1] if state.train_history else {})} - {"step", "epoch"})
            raise ConfigError(f"EarlyStopping.monitor: {self.monitor!r} is not a logged metric (have: {', '.join(keys)})")

    def _observe(self, state: TrainState, value: float, step: int) -> None:
        reason = self.update(value, step)
        if reason is not None:
            logger.warning("early stopping after step %d: %s", step, reason)
            state.request_stop(f"early stopping: {reason}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], int(state["wait"])
