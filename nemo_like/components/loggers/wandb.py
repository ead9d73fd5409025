"""Weights & Biases run from the recipe's ``wandb:`` section (``project, entity, name, save_dir``).

``WANDB_MODE=offline`` (or ``mode: offline``) keeps everything on disk under ``save_dir/wandb``;
``wandb sync`` uploads it later.
"""

from __future__ import annotations

import os
from typing import Any

from nemo_like.components.loggers.optional import import_optional


class WandbLogger:
    """One W&B run: the flat config as its config, train/val metrics as history keyed by step."""

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        save_dir: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        group: str | None = None,
        **init_kwargs: Any,
    ) -> None:
        wandb = import_optional("wandb", "wandb", "wandb")
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        self.save_dir = save_dir
        self.run = wandb.init(
            project=project, entity=entity, name=name, dir=save_dir, mode=mode, tags=tags, notes=notes,
            group=group, **init_kwargs,
        )

    @property
    def run_dir(self) -> str:
        """The local directory of this run (``save_dir/wandb/offline-run-...`` or ``run-...``)."""
        return self.run.settings.sync_dir

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str = "success") -> None:
        self.run.finish(exit_code=0 if status == "success" else 1)
