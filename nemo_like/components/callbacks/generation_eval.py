"""Held-out exact match (or a judge's verdict) by greedy generation, before and after training, as a callback.

The score before training is the baseline the one after is read against, so both run on the
same rows with the same settings. Under torchrun every rank generates the same rows (sharded
weights are gathered collectively, so a rank that sat out would stall the others); rank 0 logs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nemo_like.components.callbacks.callback import Callback, TrainState
from nemo_like.components.distributed.parallelizer import prepare_for_inference_mode
from nemo_like.components.eval.exact_match import generation_exact_match, load_jsonl_rows
from nemo_like.components.loggers.metric_loggers import MetricLoggers
from nemo_like.components.loggers.phase_progress import PhaseProgress

logger = logging.getLogger("nemo_like")


@dataclass(eq=False)
class GenerationEval(Callback):
    """Scores ``model`` on ``path_or_dataset_id`` at the start (when ``before_training``) and on a finished run.

    Reports ``accuracy_before`` and ``accuracy_after`` in ``state.results`` and to the trackers
    as ``generation_eval/accuracy_*``. ``autocast`` makes the context the training step runs in.
    """

    model: nn.Module
    tokenizer: Any
    path_or_dataset_id: str
    column_mapping: dict[str, str] | None = None
    use_hf_chat_template: bool = True
    max_new_tokens: int = 16
    batch_size: int = 32
    limit: int | None = None
    before_training: bool = True
    judge: Callable[[str, dict], bool] | None = None  # scores each generation instead of exact match
    adapt_threads: bool = True  # on a CPU, decode on no more threads than other processes leave cores free
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    world_size: int = 1
    cp_size: int = 1
    metric_loggers: MetricLoggers = field(default_factory=MetricLoggers)
    accuracy_before: float | None = field(default=None, init=False)

    def on_train_start(self, state: TrainState) -> None:
        if self.before_training:
            self.accuracy_before = self.score("before training")

    def on_training_complete(self, state: TrainState) -> None:
        after = self.score("after training")
        state.results.update(accuracy_before=self.accuracy_before, accuracy_after=after)
        if after is not None:
            accuracy = {"generation_eval/accuracy_after": after}
            if self.accuracy_before is not None:
                accuracy["generation_eval/accuracy_before"] = self.accuracy_before
            self.metric_loggers.log_metrics(accuracy, state.last_step)

    def score(self, when: str) -> float | None:
        """The exact-match accuracy, or None under context parallel, which token-by-token generation cannot use."""
        if self.cp_size > 1:
            logger.warning("generation_eval %s: skipped; context parallel splits sequences over ranks, "
                           "which token-by-token generation cannot use", when)
            return None
        if self.world_size > 1:
            prepare_for_inference_mode(self.model)
        rows = load_jsonl_rows(self.path_or_dataset_id, limit=self.limit)
        what = "exact match" if self.judge is None else f"{getattr(self.judge, '__name__', 'judge')} rate"
        # Minutes of greedy decoding on a CPU: say what starts, then how far it is (see phase_progress.py).
        batches = -(-len(rows) // self.batch_size)
        logger.info("generation eval %s: %d rows in %d batches of up to %d, at most %d new tokens each",
                    when, len(rows), batches, self.batch_size, self.max_new_tokens)
        progress = PhaseProgress(f"generation eval {when}", len(rows), "rows")
        start = time.perf_counter()
        with self.autocast():
            result = generation_exact_match(
                self.model, self.tokenizer, rows, column_mapping=self.column_mapping,
                use_chat_template=self.use_hf_chat_template, max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size, judge=self.judge, on_batch=progress.update,
                adapt_threads=self.adapt_threads,
            )
        logger.info("held-out %s %s: %.3f (%d rows, %.1f s, %d threads)", what, when, result["accuracy"], result["n"],
                    time.perf_counter() - start, result["threads"])
        return result["accuracy"]
