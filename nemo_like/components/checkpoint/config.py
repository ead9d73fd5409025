"""The ``checkpoint`` section as a typed object; light on purpose, so a recipe checks it before torch loads."""

from __future__ import annotations

from dataclasses import dataclass

from nemo_like.config.errors import ConfigError

LATEST = "LATEST"


@dataclass
class CheckpointingConfig:
    """The ``checkpoint`` section.

    ``restore_from``: ``LATEST`` (the default) continues from the ``LATEST`` pointer
    when there is one and starts fresh otherwise; ``none`` always starts fresh; a step
    directory name (``epoch_0_step_5``) or a path picks that checkpoint.
    ``max_recent_checkpoints`` keeps the newest N step directories (plus ``LOWEST_VAL``'s).
    """

    enabled: bool = True
    checkpoint_dir: str = "checkpoints/"
    model_save_format: str = "safetensors"
    save_consolidated: bool = True
    restore_from: str | None = LATEST
    max_recent_checkpoints: int | None = None

    def __post_init__(self) -> None:
        if self.model_save_format not in ("safetensors", "torch_save"):
            raise ConfigError(
                f"checkpoint.model_save_format: {self.model_save_format!r} is not 'safetensors' or 'torch_save'"
            )
        n = self.max_recent_checkpoints
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"checkpoint.max_recent_checkpoints: must be a positive integer or none, got {n!r}")
        if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir.strip():
            raise ConfigError(f"checkpoint.checkpoint_dir: must be a directory path, got {self.checkpoint_dir!r}")
        if isinstance(self.restore_from, str):
            word = self.restore_from.strip()
            self.restore_from = None if word.lower() in ("none", "null", "") else LATEST if word.upper() == LATEST else word
