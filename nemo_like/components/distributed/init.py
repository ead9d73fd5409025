"""Start (or skip) the process group and pick the device for this rank."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger("nemo_like")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def initialize_distributed(backend: str | None = None, timeout_minutes: float = 1) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; plain ``python`` runs as one rank.

    ``nccl`` needs CUDA: on a machine without it the run falls back to ``gloo`` with a warning,
    so a GPU recipe still runs on a laptop.
    """
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        logger.warning("dist_env.backend: nccl needs CUDA, which this machine lacks; using gloo")
        backend = "gloo"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "MASTER_ADDR" in os.environ and not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=float(timeout_minutes)), world_size=world_size, rank=rank
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                    backend=backend if dist.is_initialized() else None)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
