"""The plain (not ``_target_``-built) recipe sections every training method shares, as typed dataclasses.

They import nothing heavy: ``check_section`` fills them from the YAML before torch loads, so a
typo or a wrong type is reported at once, and the training loop reads these objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nemo_like.config.errors import ConfigError

__all__ = [
    "AutocastSection", "ClipGradNormSection", "DistEnvSection", "GenerationEvalSection", "LRSchedulerSection",
    "PackedSequenceSection", "StepSchedulerSection",
]


def _positive(section: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"{section}.{name}: must be a positive integer, got {value!r}")


@dataclass
class StepSchedulerSection:
    """``step_scheduler``: batch layout and when to stop, validate and save (steps count optimizer steps)."""

    global_batch_size: int
    local_batch_size: int
    max_steps: int | None = None
    num_epochs: int | None = None
    ckpt_every_steps: int | None = None
    val_every_steps: int | None = None

    def __post_init__(self) -> None:
        _positive("step_scheduler", global_batch_size=self.global_batch_size, local_batch_size=self.local_batch_size,
                  max_steps=self.max_steps, num_epochs=self.num_epochs, ckpt_every_steps=self.ckpt_every_steps,
                  val_every_steps=self.val_every_steps)
        if self.global_batch_size % self.local_batch_size:
            raise ConfigError(f"step_scheduler.global_batch_size: {self.global_batch_size} is not a multiple of "
                              f"step_scheduler.local_batch_size ({self.local_batch_size})")

    def check_layout(self, data_parallel_ranks: int) -> None:
        """Each optimizer step takes ``global / (local * ranks)`` micro-batches: it must be a whole number."""
        per_step = self.local_batch_size * data_parallel_ranks
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"step_scheduler.global_batch_size: {self.global_batch_size} is not a multiple of "
                f"step_scheduler.local_batch_size x data-parallel ranks = {self.local_batch_size} x "
                f"{data_parallel_ranks} = {per_step}"
            )


@dataclass
class LRSchedulerSection:
    """``lr_scheduler``: warmup then decay (see ``components/optim/scheduler.py``)."""

    lr_decay_style: Literal["cosine", "linear", "constant", "WSD", "inverse-square-root"] = "cosine"
    lr_warmup_steps: int | None = None
    lr_decay_steps: int | None = None
    min_lr: float | None = None
    init_lr: float | None = None
    wsd_decay_steps: int | None = None
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "exponential"
    start_weight_decay: float | None = None
    end_weight_decay: float | None = None
    weight_decay_incr_style: str | None = None
    start_wd: float | None = None
    end_wd: float | None = None
    wd_incr_steps: int | None = None
    wd_incr_style: str | None = None

    def __post_init__(self) -> None:
        for name in ("lr_warmup_steps", "lr_decay_steps", "wsd_decay_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"lr_scheduler.{name}: must be >= 0, got {value!r}")
        if self.min_lr is not None and self.min_lr < 0:
            raise ConfigError(f"lr_scheduler.min_lr: must be >= 0, got {self.min_lr!r}")

    def kwargs(self) -> dict[str, Any]:
        """The fields written in the YAML, for ``build_lr_scheduler``."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class ClipGradNormSection:
    """``clip_grad_norm``: the total gradient norm is scaled down to ``max_norm`` (none: measured only)."""

    max_norm: float | None = None

    def __post_init__(self) -> None:
        if self.max_norm is not None and not self.max_norm > 0:
            raise ConfigError(f"clip_grad_norm.max_norm: must be > 0 or none, got {self.max_norm!r}")


@dataclass
class DistEnvSection:
    """``dist_env``: the process-group backend (nccl on CUDA, gloo otherwise) and its timeout."""

    backend: Literal["nccl", "gloo"] | None = None
    timeout_minutes: float = 1

    def __post_init__(self) -> None:
        if not self.timeout_minutes > 0:
            raise ConfigError(f"dist_env.timeout_minutes: must be > 0, got {self.timeout_minutes!r}")


@dataclass
class AutocastSection:
    """``autocast``: mixed precision for forward passes (fp32 master weights)."""

    dtype: Literal["bfloat16", "float16", "torch.bfloat16", "torch.float16", "bf16", "fp16"] | None = None
    enabled: bool = True


@dataclass
class PackedSequenceSection:
    """``packed_sequence``: several documents per row (0 turns packing off, as in NeMo AutoModel)."""

    packed_sequence_size: int = 0
    split_across_pack: bool = False
    pad_token_id: int | None = None
    skip_long_samples: bool = False
    packing_strategy: Literal["max_fill", "best_fit", "sequential"] = "max_fill"
    max_packs: int | None = None

    def __post_init__(self) -> None:
        if self.packed_sequence_size < 0:
            raise ConfigError(f"packed_sequence.packed_sequence_size: must be >= 0, got {self.packed_sequence_size}")
        _positive("packed_sequence", max_packs=self.max_packs)

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class GenerationEvalSection:
    """``generation_eval``: held-out exact match by greedy generation, before and after training."""

    path_or_dataset_id: str
    column_mapping: dict[str, str] | None = None
    use_hf_chat_template: bool = True
    max_new_tokens: int = 16
    batch_size: int = 32
    limit: int | None = None
    before_training: bool = True

    def __post_init__(self) -> None:
        _positive("generation_eval", max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, limit=self.limit)
