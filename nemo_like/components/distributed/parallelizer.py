"""Apply the configured parallelism to a model: tensor/context parallel, activation checkpointing, FSDP2 or DDP.

Order matters and follows torch's composable APIs: tensor parallel first (it turns
weights into DTensors on the ``tp`` mesh), then activation checkpointing, then FSDP2,
which shards whatever it finds over the data-parallel mesh, giving 2-D (dp x tp)
DTensors where TP already split a weight. FSDP2 wraps each transformer block on its own
(one all-gather per block, freed after use) and then the root, which takes the
embedding, final norm and lm_head.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from nemo_like.components.distributed.config import DDPConfig, FSDP2Config
from nemo_like.components.distributed.context_parallel import enable_context_parallel
from nemo_like.components.distributed.mesh import DeviceMeshes
from nemo_like.components.distributed.tp_plans import check_tp_divisibility, get_tp_plan, tied_output_embedding
from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")


def broadcast_from_rank0(model: nn.Module) -> None:
    """Make every rank's copy of the model rank 0's before sharding.

    FSDP2 and tensor parallel keep each rank's own slice of whatever that rank holds, so
    weights initialised at random with a per-rank seed (LoRA's A matrices under a ranked
    RNG, a model built from a config) would be stitched together from different draws.
    Loaded weights are equal already; this costs one broadcast of the model at start-up.
    """
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if not tensor.is_meta:
                dist.broadcast(tensor.data, src=0)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: transformers' ``_no_split_modules`` classes, else ``model.layers``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names] if names else []
    if not blocks:
        inner = getattr(model, "model", model)
        blocks = list(getattr(inner, "layers", []))
    return blocks


def _has_lora(model: nn.Module) -> bool:
    return any(type(m).__name__ == "LinearLoRA" for m in model.modules())


def apply_tensor_parallel(model: nn.Module, tp_mesh: Any, sequence_parallel: bool = False, plan: Any = None) -> None:
    """Split the model's weights over ``tp_mesh`` by its TP plan (see ``tp_plans``)."""
    from torch.distributed.tensor.parallel import parallelize_module

    if _has_lora(model):
        raise ConfigError("distributed.tp_size: LoRA layers cannot be split by tensor parallel here; "
                         "use tp_size: 1 (FSDP2 shards LoRA runs)")
    check_tp_divisibility(model, tp_mesh.size())
    tied = tied_output_embedding(model)
    parallelize_module(model, tp_mesh, get_tp_plan(model, sequence_parallel, plan))
    if tied:
        # Sharding replaced each module's parameter; point lm_head at the (identically split) embedding again.
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each block's activations in backward instead of keeping them; returns the block count."""
    from torch.distributed._composable import checkpoint

    blocks = transformer_blocks(model)
    for block in blocks:
        checkpoint(block)  # composable: keeps parameter names (and so checkpoint keys) unchanged
    return len(blocks)


def apply_fsdp2(model: nn.Module, mesh: Any, config: FSDP2Config) -> None:
    """``fully_shard`` each transformer block, then the root."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    offload = OffloadPolicy()
    if config.cpu_offload:
        if torch.cuda.is_available():
            offload = CPUOffloadPolicy(pin_memory=True)
        else:
            logger.warning("distributed_config.cpu_offload: the parameters already live on the CPU; ignored")
    kwargs = {"mesh": mesh, "mp_policy": config.mixed_precision(), "offload_policy": offload}
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # The last block is needed again at once by backward: keeping it gathered saves one all-gather.
        reshard = config.reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, reshard_after_forward=reshard, **kwargs)
    fully_shard(model, reshard_after_forward=config.reshard_after_forward, **kwargs)


def apply_ddp(model: nn.Module, mesh: Any, config: DDPConfig) -> None:
    """Replicate the model over ``mesh`` (gradients all-reduced and averaged), keeping its class and names."""
    from torch.distributed._composable.replicate import replicate

    replicate(model, device_mesh=mesh, find_unused_parameters=config.find_unused_parameters)


def prepare_for_inference_mode(model: nn.Module) -> None:
    """Gather and free every FSDP2 group once, outside ``torch.inference_mode``.

    FSDP2 allocates its gathered-parameter buffers at the first all-gather. If that is a
    generation under ``inference_mode`` (an evaluation before the first training step), the
    buffers become inference tensors that training may not write into later. Collective.
    """
    from torch.distributed.fsdp import FSDPModule

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.unshard()
                module.reshard()


def parallelize_model(
    model: nn.Module,
    meshes: DeviceMeshes,
    strategy: FSDP2Config | DDPConfig | None = None,
    sequence_parallel: bool = False,
) -> nn.Module:
    """Shard ``model`` in place for ``meshes`` with the ``distributed_config`` strategy; returns it."""
    strategy = strategy if strategy is not None else FSDP2Config()
    plan = meshes.plan
    sequence_parallel = bool(sequence_parallel or getattr(strategy, "sequence_parallel", False))
    if sequence_parallel and plan.tp == 1:
        logger.warning("distributed.sequence_parallel: needs tp_size > 1; ignored")
        sequence_parallel = False
    if isinstance(strategy, DDPConfig):
        if plan.tp > 1 or plan.dp_replicate > 1:
            raise ConfigError("distributed_config: DDP replicates whole models; "
                              "tp_size and dp_replicate_size must be 1 "
                             "(use FSDP2Config for tensor parallel or HSDP)")
        if plan.cp > 1:
            enable_context_parallel(model, meshes.cp)
        if strategy.activation_checkpointing:
            apply_activation_checkpointing(model)
        apply_ddp(model, meshes.dp_cp, strategy)
        logger.info("DDP over %s", plan.describe())
        return model
    if not isinstance(strategy, FSDP2Config):
        raise ConfigError(f"distributed_config: {type(strategy).__name__} is not FSDP2Config or DDPConfig")
    if not any(p.is_meta for p in model.parameters()):
        broadcast_from_rank0(model)
    if plan.tp > 1:
        apply_tensor_parallel(model, meshes.tp, sequence_parallel, strategy.tp_plan)
    if plan.cp > 1:
        enable_context_parallel(model, meshes.cp)
    if strategy.activation_checkpointing:
        apply_activation_checkpointing(model)
    apply_fsdp2(model, meshes.fsdp, strategy)
    logger.info("FSDP2 over %s%s", plan.describe(), " with sequence parallel" if sequence_parallel else "")
    return model
