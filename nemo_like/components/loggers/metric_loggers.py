"""Every experiment tracker a recipe asked for, behind one object the training loop talks to.

The recipe's builder (``recipes/builders/trackers.py``) makes the trackers from the ``wandb``,
``mlflow`` and ``tensorboard`` sections; this fans params and metrics out to them. JSONL files
are written by the recipe whatever trackers there are.
"""

from __future__ import annotations

import logging
from typing import Any

from nemo_like.components.loggers.params import flatten_params, numeric_metrics

logger = logging.getLogger("nemo_like")


class MetricLoggers:
    """Fans params and metrics out to each tracker; a failing tracker is reported, not fatal, after start."""

    def __init__(self, loggers: dict[str, Any] | None = None) -> None:
        self.loggers: dict[str, Any] = dict(loggers or {})

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def __getitem__(self, name: str) -> Any:
        return self.loggers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.loggers

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.loggers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker outage must not lose the training run
                logger.warning("%s: %s failed (%s: %s); this tracker is off for the rest of the run",
                               name, method, type(err).__name__, err)
                self.loggers.pop(name, None)

    def log_params(self, config: Any) -> None:
        """The resolved config, flattened to ``section.key`` params."""
        if self.loggers:
            self._each("log_params", flatten_params(config))

    def log_train(self, record: dict[str, Any]) -> None:
        """One optimizer step's record (``loss, grad_norm, lr, tps, ...``) as ``train/<key>``."""
        self.log_metrics(numeric_metrics(record, "train"), int(record["step"]))

    def log_validation(self, record: dict[str, Any]) -> None:
        """A validation record (``val_loss, ...``) as ``val/<key>`` (``val/loss``)."""
        renamed = {k.removeprefix("val_"): v for k, v in record.items()}
        self.log_metrics(numeric_metrics(renamed, "val"), int(record["step"]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.loggers and metrics:
            self._each("log_metrics", metrics, step)

    def finish(self, status: str = "success") -> None:
        """Close every tracker; ``status`` is ``success``, ``failed`` or ``killed``."""
        self._each("finish", status)
        self.loggers.clear()
