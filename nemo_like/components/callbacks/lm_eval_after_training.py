"""lm-eval on the model a run just trained, as a callback (the recipe's ``evaluation:`` section).

It runs only on a run that finished: a preempted run has seconds left, not the minutes a
benchmark takes. Under torchrun, where the weights are sharded, it scores the last checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nemo_like.components.callbacks.callback import Callback, TrainState
from nemo_like.components.eval.after_training import run_lm_evaluation
from nemo_like.components.loggers.metric_loggers import MetricLoggers


@dataclass(eq=False)
class LmEvalAfterTraining(Callback):
    """Scores ``model`` on ``section['tasks']`` on rank 0; reports ``evaluation`` in ``state.results``
    (the per-task summary; None on other ranks or when nothing was scored) and ``eval/...`` to the trackers."""

    section: dict[str, Any]
    model: nn.Module
    tokenizer: Any
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    world_size: int = 1
    metric_loggers: MetricLoggers = field(default_factory=MetricLoggers)

    def on_training_complete(self, state: TrainState) -> None:
        state.results["evaluation"] = None
        if not state.is_main:
            return
        out = run_lm_evaluation(self.section, self.model, self.tokenizer, run_dir=state.run_dir,
                                latest_dir=state.latest_checkpoint, world_size=self.world_size,
                                autocast=self.autocast())
        if out is not None:
            summary, metrics = out
            self.metric_loggers.log_metrics(metrics, state.last_step)
            state.results["evaluation"] = summary
