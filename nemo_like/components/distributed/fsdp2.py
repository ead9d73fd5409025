"""FSDP2Manager: the FSDP2 strategy as one object that shards a model over a device mesh.

A recipe's ``distributed:`` section may name this class as its ``_target_``; the section then
means exactly ``strategy: fsdp2`` (see ``DistributedConfig``). Code that drives its own loop
can use it directly: ``FSDP2Manager(FSDP2Config(...), meshes).parallelize(model)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nemo_like.components.distributed.config import FSDP2Config
from nemo_like.components.distributed.mesh import DeviceMeshes
from nemo_like.components.distributed.parallelizer import apply_activation_checkpointing, parallelize_model


class FSDP2Manager:
    """Holds an ``FSDP2Config`` and the meshes; ``parallelize`` applies TP, CP, checkpointing and FSDP2.

    Without meshes (one process) nothing is sharded, but activation checkpointing still applies:
    it is a memory choice that holds with or without other ranks.
    """

    def __init__(
        self,
        config: FSDP2Config | None = None,
        device_mesh: DeviceMeshes | None = None,
        sequence_parallel: bool = False,
        **options: Any,
    ) -> None:
        self.config = config if config is not None else FSDP2Config(**options)
        if config is not None and options:
            raise TypeError(f"FSDP2Manager: give either config or its fields, not both ({sorted(options)})")
        self.device_mesh = device_mesh
        self.sequence_parallel = bool(sequence_parallel or self.config.sequence_parallel)

    def parallelize(self, model: nn.Module) -> nn.Module:
        """Shard ``model`` in place over the meshes (checkpointing only, for one process); returns it."""
        if self.device_mesh is None:
            if self.config.activation_checkpointing:
                apply_activation_checkpointing(model)
            return model
        return parallelize_model(model, self.device_mesh, self.config, sequence_parallel=self.sequence_parallel)
