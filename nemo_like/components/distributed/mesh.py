"""The rank layout: sizes checked against the world, then a DeviceMesh ``(dp_replicate, dp_shard, cp, tp)``.

``tp`` is the innermost dimension, so tensor-parallel peers are neighbouring ranks (the
same node, where the links are fastest); ``dp_replicate`` is the outermost, so HSDP
replicas span nodes. The flattened views are kept here because torch stops resolving
flattened names from the root mesh: ``dp`` (ranks that see different samples),
``dp_cp`` (ranks that see different tokens: loss sums and token counts) and the FSDP
mesh (``dp_shard`` x ``cp``, with ``dp_replicate`` in front for HSDP).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from nemo_like.components.distributed.config import DistributedConfig
from nemo_like.config.errors import ConfigError

MESH_DIMS = ("dp_replicate", "dp_shard", "cp", "tp")


@dataclass(frozen=True)
class MeshPlan:
    """Sizes of each mesh dimension for a given world size; needs no process group."""

    world_size: int
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int

    @property
    def dp(self) -> int:
        """Data-parallel replicas: ranks that draw different samples."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_cp(self) -> int:
        """Ranks whose gradients are averaged and whose token counts add up."""
        return self.dp * self.cp

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.dp_replicate, self.dp_shard, self.cp, self.tp)

    def coordinates(self, rank: int) -> dict[str, int]:
        """This rank's index along each dimension (row-major, ``tp`` fastest)."""
        out, rest = {}, rank
        for name, size in reversed(list(zip(MESH_DIMS, self.shape))):
            out[name] = rest % size
            rest //= size
        return {name: out[name] for name in MESH_DIMS}

    def dp_rank(self, rank: int) -> int:
        c = self.coordinates(rank)
        return c["dp_replicate"] * self.dp_shard + c["dp_shard"]

    def describe(self) -> str:
        return (f"{self.world_size} ranks = dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard}"
                f" x cp {self.cp} x tp {self.tp}")


def plan_mesh(world_size: int, config: DistributedConfig) -> MeshPlan:
    """Resolve ``dp_size: none`` and check that the sizes multiply to the number of ranks."""
    tp, cp, rep = config.tp_size, config.cp_size, config.dp_replicate_size
    if world_size % (tp * cp) != 0:
        raise ConfigError(f"distributed.tp_size * cp_size = {tp} * {cp} does not divide the {world_size} ranks")
    dp = config.dp_size if config.dp_size is not None else world_size // (tp * cp)
    if dp * cp * tp != world_size:
        raise ConfigError(f"distributed.dp_size: dp {dp} x cp {cp} x tp {tp} = {dp * cp * tp}, "
                         f"but {world_size} ranks were launched (use dp_size: none to infer it)")
    if dp % rep != 0:
        raise ConfigError(f"distributed.dp_replicate_size: {rep} does not divide dp_size {dp}")
    return MeshPlan(world_size=world_size, dp_replicate=rep, dp_shard=dp // rep, cp=cp, tp=tp)


@dataclass
class DeviceMeshes:
    """The root mesh and the views the parallelizer, the loss and the sampler use."""

    plan: MeshPlan
    root: Any
    dp: Any
    dp_cp: Any
    fsdp: Any
    tp: Any
    cp: Any

    @property
    def dp_rank(self) -> int:
        return self.dp.get_local_rank()


def build_device_mesh(plan: MeshPlan, device_type: str) -> DeviceMeshes:
    """Create the mesh over the initialised process group (collective: every rank calls it)."""
    from torch.distributed.device_mesh import init_device_mesh

    root = init_device_mesh(device_type, plan.shape, mesh_dim_names=MESH_DIMS)
    dp = root["dp_replicate", "dp_shard"]._flatten("dp")
    dp_cp = root["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp")
    shard_cp = root["dp_shard", "cp"]._flatten("dp_shard_cp")
    fsdp = shard_cp
    if plan.dp_replicate > 1:
        with warnings.catch_warnings():  # the 2-D HSDP view needs the flattened name from the root
            warnings.simplefilter("ignore")
            fsdp = root["dp_replicate", "dp_shard_cp"]
    return DeviceMeshes(plan=plan, root=root, dp=dp, dp_cp=dp_cp, fsdp=fsdp, tp=root["tp"], cp=root["cp"])
