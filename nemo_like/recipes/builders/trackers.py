"""The ``wandb``, ``mlflow`` and ``tensorboard`` sections of a recipe as one ``MetricLoggers``.

Each section turns on one tracker (``wandb: null`` or ``enabled: false`` turns it off again);
a section with a ``_target_`` builds that class instead, with the same keys. Only rank 0
tracks: other ranks get an empty set.
"""

from __future__ import annotations

import os
from typing import Any

from nemo_like.components.loggers.metric_loggers import MetricLoggers
from nemo_like.components.loggers.mlflow import MLflowLogger
from nemo_like.components.loggers.tensorboard import TensorBoardLogger
from nemo_like.components.loggers.wandb import WandbLogger
from nemo_like.config.errors import ConfigError

TRACKER_SECTIONS = ("wandb", "mlflow", "tensorboard")


def _section_kwargs(section: Any) -> dict[str, Any] | None:
    if section is None or section is False:
        return None
    kwargs = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    on = [kwargs.pop(flag, True) for flag in ("enabled", "enable")]  # NeMo AutoModel writes `enable`
    return kwargs if all(on) else None


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
    try:
        if name == "wandb":
            if "dir" in kwargs:  # W&B's own name for the folder (as wandb.init calls it)
                if kwargs.get("save_dir") not in (None, kwargs["dir"]):
                    raise ConfigError(f"wandb.dir: {kwargs['dir']!r} and wandb.save_dir: {kwargs['save_dir']!r} "
                                      "name two folders; keep one")
                kwargs["save_dir"] = kwargs.pop("dir")
            kwargs.setdefault("save_dir", None)
            kwargs["save_dir"] = kwargs["save_dir"] or run_dir
            return WandbLogger(**kwargs)
        if name == "mlflow":
            return MLflowLogger(**kwargs)
        kwargs["log_dir"] = kwargs.get("log_dir") or os.path.join(run_dir, "tensorboard")
        return TensorBoardLogger(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{name}: {err}") from err
