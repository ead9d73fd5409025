"""Start (or skip) the process group, lay the ranks out on a device mesh, and pick this rank's device."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nemo_like.components.distributed.config import DistributedConfig
from nemo_like.components.distributed.mesh import DeviceMeshes, MeshPlan, build_device_mesh, plan_mesh

logger = logging.getLogger("nemo_like")

# The group whose ranks see different tokens (data x context parallel). Token counts and
# loss sums are added over it; tensor-parallel peers hold the same tokens and must not count twice.
# "dp" is this rank's (index, count) among the ranks that draw different samples.
_DATA_GROUP: dict[str, Any] = {"group": None, "dp": None}


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    mesh: DeviceMeshes | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def plan(self) -> MeshPlan:
        if self.mesh is not None:
            return self.mesh.plan
        return MeshPlan(world_size=self.world_size, dp_replicate=1, dp_shard=self.world_size, cp=1, tp=1)

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: ranks that draw different samples (the sampler's and the step scheduler's count)."""
        return self.plan.dp

    @property
    def dp_rank(self) -> int:
        return self.plan.dp_rank(self.rank)

    @property
    def dp_cp_size(self) -> int:
        """Ranks whose gradients FSDP/DDP average: scaling the loss by this turns their mean into the global sum."""
        return self.plan.dp_cp

    @property
    def tp_size(self) -> int:
        return self.plan.tp

    @property
    def cp_size(self) -> int:
        return self.plan.cp

    @property
    def cp_rank(self) -> int:
        return self.plan.coordinates(self.rank)["cp"]


def pick_backend(backend: str | None, cuda: bool) -> str:
    """``dist_env.backend`` for this machine: ``auto`` (or None) is nccl with CUDA and gloo without; NeMo AutoModel's
    explicit ``nccl`` on a machine without CUDA falls back to gloo with a warning."""
    if backend is None or backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        logger.warning("dist_env.backend: nccl needs CUDA, which this machine lacks; using gloo "
                       "(dist_env.backend: auto picks the one that fits)")
        return "gloo"
    return backend


def initialize_distributed(
    backend: str | None = None,
    timeout_minutes: float = 1,
    distributed: DistributedConfig | dict[str, Any] | None = None,
) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; plain ``python`` runs as one rank.

    ``auto`` (or None) picks ``nccl`` with CUDA and ``gloo`` without. An explicit ``nccl`` needs CUDA:
    on a machine without it the run falls back to ``gloo`` with a warning, so a NeMo AutoModel
    recipe still runs on a laptop. With more than one rank the ``distributed``
    section's sizes are checked against the world and the device mesh is built.
    """
    cuda = torch.cuda.is_available()
    backend = pick_backend(backend, cuda)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    config = distributed if isinstance(distributed, DistributedConfig) else DistributedConfig.from_section(distributed)
    plan = plan_mesh(world_size, config)  # before any rendezvous: a wrong size fails fast, on every rank alike
    if "MASTER_ADDR" in os.environ and not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=float(timeout_minutes)),
            world_size=world_size, rank=rank,
        )
    if dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    mesh = None
    if dist.is_initialized() and world_size > 1:
        mesh = build_device_mesh(plan, device.type)
        _DATA_GROUP["group"] = mesh.dp_cp.get_group()
        _DATA_GROUP["dp"] = (plan.dp_rank(rank), plan.dp)
        logger.info("device mesh: %s", plan.describe())
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                    backend=backend if dist.is_initialized() else None, mesh=mesh)


def data_parallel_rank_and_size() -> tuple[int, int]:
    """(index, count) of this rank among those that read different samples, for readers that shard data.

    Tensor- and context-parallel peers must read the same samples, so with a device mesh
    this is the data-parallel coordinate, not the global rank.
    """
    if _DATA_GROUP["dp"] is not None:
        return _DATA_GROUP["dp"]
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def data_parallel_group() -> Any:
    """The process group that :func:`all_reduce_sum` uses (None: the whole world)."""
    return _DATA_GROUP["group"]


def all_reduce_sum(value: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum a tensor over the ranks that hold different tokens (identity for one process).

    Without a device mesh that is every rank; with one it is the data x context-parallel
    group, since tensor-parallel peers hold copies of the same batch.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group if group is not None else _DATA_GROUP["group"])
    return value


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy_distributed() -> None:
    _DATA_GROUP.update(group=None, dp=None)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
