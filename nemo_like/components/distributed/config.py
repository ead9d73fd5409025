"""Settings of the distributed strategies, built from the ``distributed`` and ``distributed_config`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from nemo_like.components.dtypes import parse_dtype
from nemo_like.config.errors import ConfigError

@dataclass
class DistributedConfig:
    """The ``distributed`` section: how the ranks are laid out.

    ``dp_size: none`` takes every rank that tensor and context parallel leave over.
    The device mesh is ``(dp_replicate, dp_shard, cp, tp)``: ``dp_replicate_size`` > 1
    gives HSDP (replicas of FSDP groups, e.g. one per node), the rest of ``dp_size``
    shards. ``sequence_parallel`` shards norms and residuals along the sequence inside
    each tensor-parallel group.
    """

    dp_size: int | str | None = None  # "auto"/"none": every rank that tp and cp leave over
    dp_replicate_size: int = 1
    tp_size: int = 1
    cp_size: int = 1
    sequence_parallel: bool = False

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> "DistributedConfig":
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"distributed.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**section)

    def __post_init__(self) -> None:
        for name in ("dp_size", "dp_replicate_size", "tp_size", "cp_size"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("none", "null", "auto"):
                value = None
            if value is None and name == "dp_size":
                self.dp_size = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"distributed.{name}: must be a positive integer, got {value!r}")


@dataclass
class FSDP2Config:
    """FSDP2 (``fully_shard``) options; a single process trains the model unsharded.

    ``mp_param_dtype`` is the dtype parameters are gathered in for compute (None: the
    model's own dtype); gradients are reduced in ``mp_reduce_dtype``. ``tp_plan``
    overrides the built-in tensor-parallel plan: a dict of module pattern -> style name
    (``colwise``, ``rowwise``, ``colwise_rep``, ``rowwise_rep``, ``sequence_parallel``) or
    an import path of a function ``(model, sequence_parallel) -> dict``.
    """

    sequence_parallel: bool = False
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    mp_param_dtype: str | None = None
    mp_reduce_dtype: str = "float32"
    mp_output_dtype: str | None = None
    tp_plan: dict[str, str] | str | None = None
    defer_fsdp_grad_sync: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def mixed_precision(self) -> Any:
        """The FSDP2 ``MixedPrecisionPolicy`` these fields describe."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=parse_dtype(self.mp_param_dtype, "distributed_config.mp_param_dtype"),
            reduce_dtype=parse_dtype(self.mp_reduce_dtype, "distributed_config.mp_reduce_dtype"),
            output_dtype=parse_dtype(self.mp_output_dtype, "distributed_config.mp_output_dtype"),
        )


@dataclass
class DDPConfig:
    """Plain data parallel: every rank holds the whole model; gradients are all-reduced."""

    activation_checkpointing: bool = False
    find_unused_parameters: bool = False
    sequence_parallel: bool = False
