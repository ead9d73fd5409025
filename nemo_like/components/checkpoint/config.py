"""The ``checkpoint`` section as a typed object; light on purpose, so a recipe checks it before torch loads."""

from __future__ import annotations

from dataclasses import dataclass

from nemo_like.config.errors import ConfigError

LATEST = "LATEST"


@dataclass
class CheckpointingConfig:
    """The ``checkpoint`` section.

    ``restore_from``: ``LATEST`` (the default) continues from the ``LATEST`` pointer
    when there is one and starts fresh otherwise; ``none`` always starts fresh, first moving an
    earlier run's records and checkpoints in the directory to ``earlier_runs/<time>/`` (never
    appending to them); a step directory name (``epoch_0_step_5``) or a path picks that checkpoint.
    ``max_recent_checkpoints`` keeps the newest N step directories (plus ``LOWEST_VAL``'s).
    ``save_consolidated``: ``true``/``every`` writes the Hugging Face copy (``model/consolidated/``)
    in every checkpoint, ``final`` only in the last step's, ``false`` never.
    ``dequantize_base_checkpoint``: base weights are always loaded dense and trainable here (GGUF
    blocks are unpacked; a bitsandbytes QLoRA base is quantized on purpose), so both values hold.
    ``fsync``: every file reaches the disk before the manifest seals the step (flushed in the
    background while later files are written), so a power loss cannot leave a sealed step with
    missing data; ``false`` lets the operating system write them when it likes (a save then costs what
    ``save_pretrained`` + ``torch.save`` cost; a killed process still leaves only complete steps, and
    a step damaged by a power loss is refused at resume by its manifest).
    """

    enabled: bool = True
    checkpoint_dir: str = "checkpoints/"
    model_save_format: str = "safetensors"
    save_consolidated: bool | str = True
    restore_from: str | None = LATEST
    max_recent_checkpoints: int | None = None
    dequantize_base_checkpoint: bool = False
    fsync: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.save_consolidated, str):
            word = self.save_consolidated.strip().lower()
            modes = {"true": True, "every": True, "false": False, "none": False, "final": "final"}
            if word not in modes:
                raise ConfigError(f"checkpoint.save_consolidated: expected true, false, 'every' or 'final', "
                                  f"got {self.save_consolidated!r}")
            self.save_consolidated = modes[word]
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
