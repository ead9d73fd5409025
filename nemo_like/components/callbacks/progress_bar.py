"""The console view of a run as a callback: one line per step, a live bar when a person watches."""

from __future__ import annotations

from typing import Any

from nemo_like.components.callbacks.callback import Callback, TrainState
from nemo_like.components.loggers.progress import ProgressReporter


class ProgressBar(Callback):
    """``backend`` is ``tqdm`` or ``rich``; ``disable: true`` (or ``disable_progress_bar``) keeps the lines only.

    The bar is drawn only when both stdout and stderr are terminals, so a log file or a pipe
    gets plain step lines.
    """

    def __init__(self, backend: str = "tqdm", disable: bool = False) -> None:
        if backend not in ("tqdm", "rich"):
            raise ValueError(f"ProgressBar.backend: {backend!r} is not 'tqdm' or 'rich'")
        self.backend = backend
        self.disable = disable
        self.reporter: ProgressReporter | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.reporter = ProgressReporter(state.max_steps, initial=state.step, enabled=state.is_main,
                                         disable_progress_bar=self.disable, backend=self.backend)

    def on_train_step_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.reporter is not None:
            self.reporter.update(metrics)

    def on_validation_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.reporter is not None and "val_accuracy" in record:  # a method scored by rewards (GRPO)
            self.reporter.write(f"validation | step {record['step']} | val_accuracy {record['val_accuracy']:.3f} | "
                                f"val_reward {record['val_reward']:.3f}")
        elif self.reporter is not None and "val_loss" in record:
            extra = (f" | val_reward_acc {record['val_rewards/accuracies']:.3f}"
                     if "val_rewards/accuracies" in record else "")
            self.reporter.write(f"validation | step {record['step']} | val_loss {record['val_loss']:.4f}{extra}")

    def on_train_end(self, state: TrainState) -> None:
        if self.reporter is not None:
            if state.stop_reason:
                self.reporter.write(f"stopped after step {state.step}: {state.stop_reason}")
            self.reporter.close()
            self.reporter = None
