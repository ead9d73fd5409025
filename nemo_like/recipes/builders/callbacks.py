"""The callbacks of a run: the ``callbacks:`` list of a recipe, and the ones every method gets from
its shared sections (held-out generation eval, lm-eval after training, the loss plot)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from torch import nn

from nemo_like.components.callbacks.callback import Callback, CallbackList
from nemo_like.components.callbacks.generation_eval import GenerationEval
from nemo_like.components.callbacks.lm_eval_after_training import LmEvalAfterTraining
from nemo_like.components.callbacks.loss_plot import LossPlot
from nemo_like.components.callbacks.progress_bar import ProgressBar
from nemo_like.components.loggers.metric_loggers import MetricLoggers
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode
from nemo_like.config.target_gate import resolve_target


def build_callbacks(nodes: Any, disable_progress_bar: bool = False) -> CallbackList:
    """Instantiate each ``_target_`` entry (a bare import path is accepted too), in order.

    A default ``ProgressBar`` goes first when the list has none; ``disable_progress_bar``
    keeps its log lines and drops the bar.
    """
    nodes = nodes or []
    if not isinstance(nodes, list):
        raise ConfigError("callbacks: expects a list of entries with a _target_ "
                          "(e.g. nemo_like.components.callbacks.EarlyStopping)")
    callbacks = []
    for index, node in enumerate(nodes):
        if isinstance(node, str):
            node = ConfigNode({"_target_": node}, path=f"callbacks.{index}")
        if not hasattr(node, "instantiate"):
            raise ConfigError(f"callbacks.{index}: {node!r} is not a mapping with a _target_")
        callbacks.append(node.instantiate())
    if not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.insert(0, ProgressBar())
    if disable_progress_bar:
        for cb in callbacks:
            if isinstance(cb, ProgressBar):
                cb.disable = True
    return CallbackList(callbacks)


def build_run_callbacks(
    generation_eval: Any,
    evaluation: dict[str, Any] | None,
    model: nn.Module,
    tokenizer: Any,
    dist: Any,
    autocast: Callable[[], contextlib.AbstractContextManager],
    metric_loggers: MetricLoggers,
) -> list[Callback]:
    """``generation_eval`` (a ``GenerationEvalSection`` or None), ``evaluation:`` (checked), then the loss plot.

    They go before the listed callbacks, so the score before training is taken before the
    progress bar starts, and the evaluations after it run in this order.
    """
    callbacks: list[Callback] = []
    if generation_eval:
        options = dict(vars(generation_eval))
        if options.get("judge") is not None:
            options["judge"] = resolve_target(options["judge"], key="generation_eval.judge")
        callbacks.append(GenerationEval(model, tokenizer, **options, autocast=autocast,
                                        world_size=dist.world_size, cp_size=dist.cp_size,
                                        metric_loggers=metric_loggers))
    if evaluation:
        callbacks.append(LmEvalAfterTraining(evaluation, model, tokenizer, autocast=autocast,
                                             world_size=dist.world_size, metric_loggers=metric_loggers))
    callbacks.append(LossPlot())
    return callbacks
