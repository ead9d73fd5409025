"""The hooks a callback may implement, the run state they see, and the list the loop calls.

A callback reacts to the loop; it never drives it. To stop a run it calls
``state.request_stop(reason)``: the loop then saves a checkpoint of that step and ends as a
finished run (the after-training evaluation still runs). Evaluations and reports of a run that
finished go in ``on_training_complete``, which a preempted or failed run never calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """What the loop knows: position, where the run writes, whether it should stop and why."""

    max_steps: int
    run_dir: str
    is_main: bool = True
    step: int = 0
    epoch: int = 0
    train_history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    should_stop: bool = False
    stop_reason: str | None = None
    latest_checkpoint: str | None = None  # set before ``on_training_complete``: the last step directory saved
    results: dict[str, Any] = field(default_factory=dict)  # what callbacks report; the loop returns it too

    @property
    def last_step(self) -> int:
        """The last step trained (in this run or the one it resumed); 0 before any."""
        return int(self.train_history[-1]["step"]) if self.train_history else 0

    def request_stop(self, reason: str) -> None:
        """Ask the loop to finish after the current step; the first reason given is kept."""
        if not self.should_stop:
            self.should_stop = True
            self.stop_reason = reason


class Callback:
    """Base class: every hook does nothing. ``state.train_history``/``val_history`` hold earlier records
    (also those of the run being resumed) when ``on_train_start`` is called."""

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_train_step_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        pass

    def on_validation_end(self, state: TrainState, record: dict[str, Any]) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def on_training_complete(self, state: TrainState) -> None:
        """After ``on_train_end``, only on a run that finished (not stopped by a signal, not failed)."""


class CallbackList(Callback):
    """Calls each callback in order; also records every step and validation into ``state``."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])
        for index, cb in enumerate(self.callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{index}]: {type(cb).__name__} is not a "
                                "nemo_like.components.callbacks.Callback")

    def __iter__(self):  # noqa: ANN204
        return iter(self.callbacks)

    def find(self, kind: type) -> Any:
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def on_train_start(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_start(state)

    def on_train_step_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        state.step, state.epoch = int(metrics["step"]), int(metrics.get("epoch", state.epoch))
        state.train_history.append(metrics)
        for cb in self.callbacks:
            cb.on_train_step_end(state, metrics)

    def on_validation_end(self, state: TrainState, record: dict[str, Any]) -> None:
        state.val_history.append(record)
        for cb in self.callbacks:
            cb.on_validation_end(state, record)

    def on_train_end(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_end(state)

    def on_training_complete(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_training_complete(state)
