"""All trainable gradients as views of one flat buffer, allocated once and zeroed in place.

Why: with ``zero_grad(set_to_none=True)`` every step's first backward allocates each
gradient anew, in the middle of that step's activations. On a CPU those small long-lived
blocks split the heap, freed activation memory can no longer be reused as one piece, and
the process's resident memory grows by hundreds of MiB over what is live (measured on
SmolLM2-135M LoRA: see docs/performance.md). One buffer made before the first step keeps
them out of the way; autograd accumulates into the views in place, so the sums are the
same bit for bit. Megatron's contiguous gradient buffer is the same idea.

Single-process only: DDP and FSDP2 manage their own gradient storage.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ContiguousGrads:
    """``p.grad`` for every given parameter, as a view into one zero-initialised buffer."""

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("contiguous_grads: the model has no trainable parameters")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"contiguous_grads: trainable parameters mix dtypes {dtypes} or devices {devices}")
        total = sum(p.numel() for p in self.params)
        self.buffer = torch.zeros(total, dtype=dtypes.pop(), device=devices.pop())
        self.attach()

    def attach(self) -> None:
        """Point every parameter's ``.grad`` at its slice of the buffer."""
        offset = 0
        for p in self.params:
            p.grad = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero_(self) -> None:
        """The ``zero_grad`` of this layout: one memset, the views stay in place."""
        self.buffer.zero_()
        if not all(self._in_buffer(p.grad) for p in self.params):  # someone set them to None or replaced them
            self.attach()

    def _in_buffer(self, grad: torch.Tensor | None) -> bool:
        return grad is not None and grad.untyped_storage().data_ptr() == self.buffer.untyped_storage().data_ptr()
