"""The SFT recipe's multi-GPU sections tried on any machine (``nemo-like dry-run``): the mesh, the batch
layout and rank 0's shards of the model on the meta device, read from the recipe's ``distributed``,
``distributed_config``, ``step_scheduler``, ``model`` and ``peft`` sections. The sharding itself is the
``components/distributed/dry_run.py`` part; this reads the sections it needs.
"""

from __future__ import annotations

from typing import Any

import torch

from nemo_like.components.distributed.config import DistributedConfig
from nemo_like.components.distributed.dry_run import architecture_config, dry_run
from nemo_like.components.distributed.mesh import plan_mesh
from nemo_like.components.dtypes import parse_dtype
from nemo_like.config.errors import ConfigError
from nemo_like.config.loader import ConfigNode
from nemo_like.recipes.builders.model import build_parallel_strategy

__all__ = ["dry_run_recipe"]


def dry_run_recipe(cfg: ConfigNode, world_size: int | None = None) -> dict[str, Any]:
    """Plan and shard ``cfg``'s model for ``world_size`` ranks (default: dp x tp x cp of its ``distributed``
    section) on the meta device; returns rank 0's view and the gradient accumulation the batch sizes give."""
    layout = DistributedConfig.from_section(cfg.get("distributed").to_dict() if "distributed" in cfg else None)
    if world_size is None:
        if layout.dp_size is None:
            raise ConfigError("distributed.dp_size: is none, so give the number of ranks (--world-size N)")
        world_size = layout.dp_size * layout.tp_size * layout.cp_size
    plan = plan_mesh(world_size, layout)
    sched = cfg.get("step_scheduler").to_dict() if "step_scheduler" in cfg else {}
    gbs, lbs = sched.get("global_batch_size"), sched.get("local_batch_size")
    if gbs and lbs and gbs % (lbs * plan.dp):
        raise ConfigError(f"step_scheduler.global_batch_size: {gbs} is not divisible by local_batch_size * dp_size "
                          f"= {lbs} * {plan.dp}")
    strategy = build_parallel_strategy(cfg.get("distributed_config"), layout)
    config = architecture_config(_model_name(cfg))
    dtype = parse_dtype(cfg.get("model.torch_dtype", None) or cfg.get("model.dtype", None), "model.torch_dtype")
    peft_config = cfg.peft.instantiate() if "peft" in cfg else None
    report = dry_run(config, plan, strategy, dtype=dtype or torch.bfloat16, sequence_parallel=layout.sequence_parallel,
                     peft_config=peft_config)
    report["grad_acc_steps"] = (gbs // (lbs * plan.dp)) if gbs and lbs else None
    return report


def _model_name(cfg: ConfigNode) -> str:
    name = cfg.get("model.pretrained_model_name_or_path", None) or cfg.get("model.config", None)
    if name is None:
        raise ConfigError("model.pretrained_model_name_or_path: the dry run needs it to know the architecture")
    return str(name)
