"""Every experiment tracker a recipe asked for, behind one object the training loop talks to.

The ``wandb``, ``mlflow`` and ``tensorboard`` sections of a recipe each turn on one tracker
(``wandb: null`` or ``enabled: false`` turns it off again); a section with a ``_target_`` builds
that class instead, with the same keys. Only rank 0 tracks: other ranks get an empty set.
JSONL files are written by the recipe whatever is configured here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from nemo_like.components.loggers.params import flatten_params, numeric_metrics

logger = logging.getLogger("nemo_like")

TRACKER_SECTIONS = ("wandb", "mlflow", "tensorboard")


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


def _section_kwargs(section: Any) -> dict[str, Any] | None:
    if section is None or section is False:
        return None
    kwargs = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    if not kwargs.pop("enabled", True):
        return None
    return kwargs


def build_metric_loggers(config: Any, run_dir: str, enabled: bool = True) -> MetricLoggers:
    """Build the trackers named in ``config`` (a ConfigNode or dict); defaults put files under ``run_dir``.

    ``run_dir`` is the checkpoint directory: W&B's ``save_dir`` and TensorBoard's ``log_dir``
    default to it (``run_dir/wandb``, ``run_dir/tensorboard``).
    """
    if not enabled:
        return MetricLoggers()
    sections = {name: config.get(name) if name in config else None for name in TRACKER_SECTIONS}
    built: dict[str, Any] = {}
    try:
        for name, section in sections.items():
            kwargs = _section_kwargs(section)
            if kwargs is None:
                continue
            target = kwargs.pop("_target_", None)
            if target is not None:
                built[name] = config.get(name).instantiate()
                continue
            built[name] = _build_tracker(name, kwargs, run_dir)
    except BaseException:
        MetricLoggers(built).finish("failed")
        raise
    return MetricLoggers(built)


def _build_tracker(name: str, kwargs: dict[str, Any], run_dir: str) -> Any:
    from nemo_like.config.errors import ConfigError

    try:
        if name == "wandb":
            from nemo_like.components.loggers.wandb import WandbLogger

            kwargs.setdefault("save_dir", None)
            kwargs["save_dir"] = kwargs["save_dir"] or run_dir
            return WandbLogger(**kwargs)
        if name == "mlflow":
            from nemo_like.components.loggers.mlflow import MLflowLogger

            return MLflowLogger(**kwargs)
        from nemo_like.components.loggers.tensorboard import TensorBoardLogger

        kwargs["log_dir"] = kwargs.get("log_dir") or os.path.join(run_dir, "tensorboard")
        return TensorBoardLogger(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{name}: {err}") from err
