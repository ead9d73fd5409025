"""The ``callbacks:`` list of a recipe turned into a ``CallbackList`` (a progress bar unless one is listed)."""

from __future__ import annotations

from typing import Any

from nemo_like.components.callbacks.callback import CallbackList
from nemo_like.components.callbacks.progress_bar import ProgressBar
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode


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
