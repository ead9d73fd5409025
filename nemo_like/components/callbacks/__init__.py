"""Callbacks: parts that watch the training loop and may stop it (``callbacks:`` list in a recipe)."""

from nemo_like.components.callbacks.callback import Callback, CallbackList, TrainState
from nemo_like.components.callbacks.early_stopping import EarlyStopping
from nemo_like.components.callbacks.json_metrics import JSONMetricsLogger
from nemo_like.components.callbacks.progress_bar import ProgressBar

__all__ = ["Callback", "CallbackList", "EarlyStopping", "JSONMetricsLogger", "ProgressBar", "TrainState"]
