"""Settings of the distributed strategies, built from the ``distributed`` and ``distributed_config`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import logging

from nemo_like.components.dtypes import parse_dtype
from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

# ``distributed._target_`` values that name this library's FSDP2 manager: the section then builds
# exactly what ``strategy: fsdp2`` builds.
FSDP2_MANAGER_TARGETS = ("nemo_like.components.distributed.fsdp2.FSDP2Manager",)
_STRATEGIES = {"fsdp2": "fsdp2", "ddp": "ddp"}
_REFUSED_STRATEGIES = {
    "megatron_fsdp": "Megatron-FSDP is not part of this library",
    "megatron-fsdp": "Megatron-FSDP is not part of this library",
    "mfsdp": "Megatron-FSDP is not part of this library",
}
_MP_POLICY_KEYS = {"_target_", "param_dtype", "reduce_dtype", "output_dtype", "cast_forward_inputs"}
_MP_POLICY_TARGETS = ("torch.distributed.fsdp.MixedPrecisionPolicy",
                      "torch.distributed.fsdp._fully_shard.MixedPrecisionPolicy")


def _none_word(value: Any) -> Any:
    """``none``/``null``/``auto`` written as a string means None, as in the YAML ``null``."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "auto"):
        return None
    return value


@dataclass
class DistributedConfig:
    """The ``distributed`` section: how the ranks are laid out, and with which strategy.

    ``dp_size: none`` takes every rank that tensor and context parallel leave over.
    The device mesh is ``(dp_replicate, dp_shard, cp, tp)``: ``dp_replicate_size`` > 1
    gives HSDP (replicas of FSDP groups, e.g. one per node), the rest of ``dp_size``
    shards. ``sequence_parallel`` shards norms and residuals along the sequence inside
    each tensor-parallel group.

    The strategy may be named here (``strategy: fsdp2`` or ``ddp``, or ``_target_`` of
    ``FSDP2Manager``) together with its options (``activation_checkpointing``,
    ``defer_fsdp_grad_sync``, ``reshard_after_forward``, ``mp_policy``), instead of a separate
    ``distributed_config`` section. Pipeline (``pp_size`` > 1) and expert (``ep_size`` > 1)
    parallel do not exist here and are refused; their ``pipeline:``/``moe:`` blocks are
    inert without them (a warning says so), as they are wherever those sizes are 1.
    """

    dp_size: int | str | None = None  # "auto"/"none": every rank that tp and cp leave over
    dp_replicate_size: int | str | None = 1
    tp_size: int = 1
    cp_size: int = 1
    sequence_parallel: bool = False
    pp_size: int | str | None = 1
    ep_size: int | str | None = 1
    strategy: str | None = None  # None: fsdp2, or what _target_ names
    _target_: str | None = None
    activation_checkpointing: bool | str | None = None  # None: the strategy's default (off)
    defer_fsdp_grad_sync: bool | None = None
    reshard_after_forward: bool | None = None
    mp_policy: dict[str, Any] | None = None
    pipeline: dict[str, Any] | None = None
    moe: dict[str, Any] | None = None

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> "DistributedConfig":
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"distributed.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**section)

    def __post_init__(self) -> None:
        self.dp_replicate_size = _none_word(self.dp_replicate_size)
        if self.dp_replicate_size is None:
            self.dp_replicate_size = 1
        for name in ("pp_size", "ep_size"):
            if _none_word(getattr(self, name)) is None:
                setattr(self, name, 1)
        for name in ("dp_size", "dp_replicate_size", "tp_size", "cp_size", "pp_size", "ep_size"):
            value = _none_word(getattr(self, name))
            if value is None and name == "dp_size":
                self.dp_size = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"distributed.{name}: must be a positive integer, got {value!r}")
        if self.pp_size > 1:
            raise ConfigError(f"distributed.pp_size: pipeline parallel is not supported yet (got {self.pp_size}); "
                              "use pp_size: 1 and shard with FSDP2 (dp_size) and tensor parallel (tp_size)")
        if self.ep_size > 1:
            raise ConfigError(f"distributed.ep_size: MoE expert parallel is not supported here (got {self.ep_size}); "
                              "use ep_size: 1 (experts are then sharded by FSDP2 like any other weight)")
        self._strategy_given = self.strategy is not None
        self.strategy = self._resolve_strategy()
        self.activation_checkpointing = self._resolve_activation_checkpointing()
        if self.strategy == "ddp":
            for name in ("defer_fsdp_grad_sync", "reshard_after_forward", "mp_policy"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"distributed.{name}: an FSDP2 option; strategy ddp has no sharded "
                                      "parameters (use strategy: fsdp2)")
        if self.mp_policy is not None:
            self._check_mp_policy()
        if self.pipeline is not None:
            logger.warning("distributed.pipeline: ignored, pipeline parallel is off (pp_size: 1)")
        if self.moe is not None:
            logger.warning("distributed.moe: ignored, expert parallel is off (ep_size: 1)")

    def _resolve_strategy(self) -> str:
        target = self._target_.strip() if isinstance(self._target_, str) else self._target_
        if target is not None and target not in FSDP2_MANAGER_TARGETS:
            raise ConfigError(f"distributed._target_: {target!r} is not supported here; use "
                              f"{FSDP2_MANAGER_TARGETS[0]} or strategy: fsdp2")
        name = (self.strategy or "fsdp2").strip().lower()
        if name in _REFUSED_STRATEGIES:
            raise ConfigError(f"distributed.strategy: not supported here: {_REFUSED_STRATEGIES[name]}; "
                              "use strategy: fsdp2")
        if name not in _STRATEGIES:
            raise ConfigError(f"distributed.strategy: unknown strategy {self.strategy!r}; use fsdp2 or ddp")
        if target is not None and name != "fsdp2":
            raise ConfigError(f"distributed.strategy: {name} contradicts _target_ {target} (an FSDP2 manager)")
        return _STRATEGIES[name]

    def _resolve_activation_checkpointing(self) -> bool | None:
        value = self.activation_checkpointing
        if value is None or isinstance(value, bool):
            return value
        word = value.strip().lower().replace("-", "_")
        if word in ("false", "off", "none", "disabled", "no"):
            return False
        if word in ("true", "on", "full", "enabled", "yes"):
            return True
        if word == "selective":
            raise ConfigError("distributed.activation_checkpointing: selective checkpointing is not supported "
                              "here; use true (every decoder block recomputes its activations)")
        raise ConfigError(f"distributed.activation_checkpointing: expected true, false or 'full', got {value!r}")

    def _check_mp_policy(self) -> None:
        policy = dict(self.mp_policy)
        unknown = sorted(set(policy) - _MP_POLICY_KEYS)
        if unknown:
            raise ConfigError(f"distributed.mp_policy.{unknown[0]}: unknown field "
                              f"(fields: {', '.join(sorted(_MP_POLICY_KEYS - {'_target_'}))})")
        target = policy.get("_target_")
        if target is not None and target not in _MP_POLICY_TARGETS:
            raise ConfigError(f"distributed.mp_policy._target_: {target!r} is not {_MP_POLICY_TARGETS[0]}")
        if policy.get("cast_forward_inputs", True) is not True:
            raise ConfigError("distributed.mp_policy.cast_forward_inputs: only true is supported here "
                              "(FSDP2 casts each block's inputs to its compute dtype)")

    def strategy_options(self) -> dict[str, Any]:
        """The strategy options this section sets, as ``FSDP2Config``/``DDPConfig`` field values."""
        options: dict[str, Any] = {}
        if self.activation_checkpointing is not None:
            options["activation_checkpointing"] = self.activation_checkpointing
        for name in ("defer_fsdp_grad_sync", "reshard_after_forward"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        if self.mp_policy is not None:
            for key in ("param_dtype", "reduce_dtype", "output_dtype"):
                if key in self.mp_policy:
                    options[f"mp_{key}"] = self.mp_policy[key]
        return options

    def build_strategy(self, base: Any = None) -> "FSDP2Config | DDPConfig":
        """The strategy config: ``base`` (a ``distributed_config`` section, built) or this section's
        strategy with its defaults, with the options written here applied; a contradiction is an error."""
        cls = FSDP2Config if self.strategy == "fsdp2" else DDPConfig
        if base is None:
            base = cls()
        elif not isinstance(base, cls) and (self.strategy != "fsdp2" or self.strategy_written):
            raise ConfigError(f"distributed.strategy: {self.strategy} contradicts distributed_config "
                              f"({type(base).__name__})")
        for name, value in self.strategy_options().items():
            if not hasattr(base, name):
                raise ConfigError(f"distributed.{name}: not an option of {type(base).__name__}")
            default = getattr(type(base)(), name)
            current = getattr(base, name)
            if current != default and current != value:
                raise ConfigError(f"distributed.{name}: {value!r} contradicts distributed_config.{name} {current!r}")
            setattr(base, name, value)
        return base

    @property
    def strategy_written(self) -> bool:
        """Whether the YAML chose the strategy (a ``strategy`` key or an FSDP2 manager ``_target_``)."""
        return self._target_ is not None or getattr(self, "_strategy_given", False)


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
