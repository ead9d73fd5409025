"""Turns a dataloader into optimizer steps: grad accumulation, epochs, and when to validate or save.

Steps are 0-based: while the loop body runs, ``step`` is the index of the optimizer
step being taken, so ``max_steps: 10`` ends with step 9 (``epoch_0_step_9``).

A streamed dataset (an ``IterableDataset``) has no length, so nothing says how many steps
an epoch holds: such a run needs ``max_steps``, an epoch is one pass over the stream
(it ends when the data loader does), and without ``num_epochs`` the passes go on until
``max_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from nemo_like.config.loader import ConfigError


def _epoch_len(dataloader: Iterable | None, grad_acc_steps: int) -> int | None:
    """Optimizer steps in one pass over the loader, or None for a stream (no ``len``)."""
    if dataloader is None:
        return None
    try:
        batches = len(dataloader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return None
    return math.ceil(batches / grad_acc_steps)


class StepScheduler:
    """Groups micro-batches into optimizer steps and says which steps validate or checkpoint."""

    def __init__(
        self,
        global_batch_size: int,
        local_batch_size: int,
        dp_size: int = 1,
        ckpt_every_steps: int | None = None,
        val_every_steps: int | None = None,
        start_step: int = 0,
        start_epoch: int = 0,
        num_epochs: int | None = None,
        max_steps: int | None = None,
        dataloader: Iterable | None = None,
    ) -> None:
        if global_batch_size <= 0 or local_batch_size <= 0 or dp_size <= 0:
            raise ConfigError("step_scheduler: global_batch_size, local_batch_size and dp_size must be positive")
        if global_batch_size % (local_batch_size * dp_size) != 0:
            raise ConfigError(
                f"step_scheduler.global_batch_size: {global_batch_size} is not divisible by "
                f"local_batch_size * dp_size = {local_batch_size} * {dp_size}"
            )
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.dp_size = dp_size
        self.grad_acc_steps = global_batch_size // (local_batch_size * dp_size)
        self.dataloader = dataloader
        self.epoch_len = _epoch_len(dataloader, self.grad_acc_steps)
        if max_steps is None:
            if self.epoch_len is None:
                raise ConfigError(
                    "step_scheduler.max_steps: required when the dataset is streamed "
                    "(an IterableDataset has no length to count epochs in)"
                )
            max_steps = (10 if num_epochs is None else num_epochs) * self.epoch_len
        if int(max_steps) <= 0:
            raise ConfigError(f"step_scheduler.max_steps: must be > 0, got {max_steps}")
        if num_epochs is None:  # a stream runs pass after pass until max_steps
            num_epochs = 10 if self.epoch_len is not None else math.inf
        self.num_epochs = num_epochs
        self.max_steps = int(max_steps)
        self.ckpt_every_steps = ckpt_every_steps or self.epoch_len or self.max_steps
        self.val_every_steps = val_every_steps
        self.step = start_step
        self.epoch = start_epoch
        self._epoch_step = 0
        self.sigterm = False

    @property
    def epochs(self) -> Iterator[int]:
        """Epoch indices still to run; stops early once ``max_steps`` is reached."""
        while self.epoch < self.num_epochs and not self.done:
            yield self.epoch
            self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(getattr(self.dataloader, "sampler", None), "set_epoch"):
            self.dataloader.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        """Yield one list of ``grad_acc_steps`` micro-batches per optimizer step (the last may be shorter)."""
        buffer: list[Any] = []
        self._epoch_step = 0
        self._last_in_epoch = False
        iterator = iter(self.dataloader)
        batch = next(iterator, None)
        while batch is not None and not self.done:
            buffer.append(batch)
            batch = next(iterator, None)
            if len(buffer) == self.grad_acc_steps or batch is None:
                self._last_in_epoch = batch is None
                yield buffer
                buffer = []
                self.step += 1
                self._epoch_step += 1

    @property
    def done(self) -> bool:
        return self.step >= self.max_steps or self.sigterm

    @property
    def is_last_step(self) -> bool:
        return self.step == self.max_steps - 1

    @property
    def is_ckpt_step(self) -> bool:
        """Save every ``ckpt_every_steps``, at each epoch end, at the last step and on SIGTERM."""
        periodic = self.step % self.ckpt_every_steps == self.ckpt_every_steps - 1
        return periodic or self._last_in_epoch or self.is_last_step or self.sigterm

    @property
    def is_val_step(self) -> bool:
        if not self.val_every_steps:
            return False
        periodic = self.step % self.val_every_steps == self.val_every_steps - 1
        return periodic or self.is_ckpt_step

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
