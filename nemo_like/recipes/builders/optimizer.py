"""The ``optimizer`` and ``lr_scheduler`` sections: the optimizer over the trainable parameters, its LR schedule."""

from __future__ import annotations

from typing import Any

import torch

from nemo_like.components.optim.scheduler import build_lr_scheduler
from nemo_like.config.loader import ConfigNode, resolve_target


def build_optimizer(node: ConfigNode, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The ``optimizer`` section over ``model``'s trainable parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return node.instantiate(params=trainable, **optimizer_defaults(node, device))


def optimizer_defaults(node: ConfigNode, device: torch.device) -> dict[str, Any]:
    """``fused=True`` for torch's Adam/AdamW on CUDA unless the YAML picks ``fused`` or ``foreach``.

    The fused kernel updates every parameter in one launch instead of a chain of foreach ops. On a
    CPU it pays only where many small tensors dominate the step (a tiny model: a third faster), so
    there torch's own choice stands unless the YAML sets ``fused: true``.
    """
    target = resolve_target(node.get("_target_"), "optimizer._target_")
    chosen = "fused" in node or "foreach" in node
    if device.type == "cuda" and target in (torch.optim.Adam, torch.optim.AdamW) and not chosen:
        return {"fused": True}
    return {}


def build_lr_schedule(section: Any, optimizer: torch.optim.Optimizer, max_steps: int) -> Any:
    """The typed ``lr_scheduler`` section over ``max_steps`` optimizer steps; None when the YAML has none."""
    return build_lr_scheduler(optimizer, max_steps, **section.kwargs()) if section is not None else None
