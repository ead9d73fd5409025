"""Settings of the distributed strategies, built from the ``distributed_config`` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FSDP2Config:
    """FSDP2 (``fully_shard``) options; a single process trains the model unsharded."""

    sequence_parallel: bool = False
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    mp_param_dtype: str | None = None
    mp_reduce_dtype: str = "float32"
    defer_fsdp_grad_sync: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DDPConfig:
    """Plain data parallel: every rank holds the whole model."""

    activation_checkpointing: bool = False
    find_unused_parameters: bool = False
