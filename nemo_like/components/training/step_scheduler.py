"""Turns a dataloader into optimizer steps: grad accumulation, epochs, and when to validate or save.

Steps are 0-based: while the loop body runs, ``step`` is the index of the optimizer
step being taken, so ``max_steps: 10`` ends with step 9 (``epoch_0_step_9``).

How long a run is: ``max_steps`` alone trains exactly that many steps, epoch after epoch;
``num_epochs`` alone trains that many epochs; with both, whichever ends first; with
neither, 10 epochs (NeMo AutoModel's default).

A streamed dataset (an ``IterableDataset``) has no length, so nothing says how many steps
an epoch holds: such a run needs ``max_steps``, an epoch is one pass over the stream
(it ends when the data loader does), and without ``num_epochs`` the passes go on until
``max_steps``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

from nemo_like.config.errors import ConfigError

logger = logging.getLogger("nemo_like")

_DEFAULT_EPOCHS = 10  # NeMo AutoModel's num_epochs when max_steps is not given either


def _epoch_len(dataloader: Iterable | None, grad_acc_steps: int) -> int | None:
    """Optimizer steps in one pass over the loader, or None for a stream (no ``len``)."""
    if dataloader is None:
        return None
    try:
        batches = len(dataloader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return None
    return math.ceil(batches / grad_acc_steps)


def _whole(field: str, value: Any, *, optional: bool = False, hint: str = "") -> int | None:
    """``value`` as a positive integer (integral floats such as ``1e3`` count), else a ConfigError naming the field."""
    if value is None and optional:
        return None
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        what = "a positive integer" + (" or null" if optional else "")
        key = field if "." in field or " " in field else f"step_scheduler.{field}"
        raise ConfigError(f"{key}: expected {what}{hint}, got {value!r}")
    return number


def _signals(value: str | int | list[str | int] | None) -> list[int]:
    """``preemption_signal`` as signal numbers: ``SIGTERM``, ``TERM``, ``15`` or a list of them; none: []."""
    import signal

    found = []
    for item in [] if value is None else value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, int) and not isinstance(item, bool):
            number = item
        else:
            name = str(item).strip().upper()
            name = name if name.startswith("SIG") else "SIG" + name
            number = getattr(signal, name, None)
        if not isinstance(number, int) or number not in set(signal.valid_signals()) or number in (
                signal.SIGKILL, getattr(signal, "SIGSTOP", -1)):
            raise ConfigError(f"step_scheduler.preemption_signal: {item!r} is not a signal a run can catch")
        found.append(int(number))
    return found


class StepAlignedLoader:
    """The scheduler's view of its loader, whose ``state_dict()`` resumes exactly at the next optimizer step.

    ``StepScheduler`` reads one micro-batch ahead to see where an epoch ends, so when a
    step's checkpoint is written the loader has already handed out the first batch of the
    following step (or hit the epoch's end). Its own state would then skip that batch on
    resume; the state from just before the latest fetch is the one that continues the run.
    Everything else is passed through to the wrapped loader.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.stateful = hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
        self._before_last_fetch: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __iter__(self) -> Iterator[Any]:
        if not self.stateful:
            yield from self.loader
            return
        iterator = iter(self.loader)
        while True:
            self._before_last_fetch = self.loader.state_dict()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if not self.stateful:
            return {}
        if self._before_last_fetch is None:
            return self.loader.state_dict()
        return self._before_last_fetch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load, then build the resumed iterator now: building one draws a seed from torch's global
        RNG, which must happen before the RNG state itself is restored, as it did in the original run."""
        if not self.stateful or not state:
            logger.warning("the dataloader keeps no state (use torchdata's StatefulDataLoader); "
                           "the resumed run starts its data from the beginning of an epoch")
            return
        self.loader.load_state_dict(state)
        self.loader.state_dict()
        self._before_last_fetch = None


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
        save_checkpoint_every_epoch: bool = True,
        gc_every_steps: int | None = None,
        log_remote_every_steps: int | None = None,
        preemption_signal: str | int | list[str | int] | None = "SIGTERM",
    ) -> None:
        global_batch_size = _whole("global_batch_size", global_batch_size)
        local_batch_size = _whole("local_batch_size", local_batch_size)
        dp_size = _whole("dp_size (data-parallel ranks)", dp_size)
        ckpt_every_steps = _whole("ckpt_every_steps", ckpt_every_steps, optional=True,
                                  hint=" (null saves at each epoch end and at the last step)")
        val_every_steps = _whole("val_every_steps", val_every_steps, optional=True,
                                 hint=" (null turns validation off)")
        num_epochs = _whole("num_epochs", num_epochs, optional=True)
        max_steps = _whole("max_steps", max_steps, optional=True)
        self.gc_every_steps = _whole("gc_every_steps", gc_every_steps, optional=True)
        self.log_remote_every_steps = _whole("log_remote_every_steps", log_remote_every_steps, optional=True)
        self.save_checkpoint_every_epoch = bool(save_checkpoint_every_epoch)
        self.preemption_signals = _signals(preemption_signal)
        if global_batch_size % (local_batch_size * dp_size) != 0:
            raise ConfigError(
                f"step_scheduler.global_batch_size: {global_batch_size} is not divisible by "
                f"local_batch_size * dp_size = {local_batch_size} * {dp_size}"
            )
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.dp_size = dp_size
        self.grad_acc_steps = global_batch_size // (local_batch_size * dp_size)
        # What a checkpoint saves as the data position (see StepAlignedLoader): the loader as this reads it.
        self.dataloader = StepAlignedLoader(dataloader) if dataloader is not None else None
        self.epoch_len = _epoch_len(dataloader, self.grad_acc_steps)
        if self.epoch_len == 0:
            raise ConfigError("dataloader: one pass over the data gives no batches (an empty dataset, or "
                              f"drop_last with fewer rows than step_scheduler.local_batch_size {local_batch_size})")
        if max_steps is None:
            if self.epoch_len is None:
                raise ConfigError(
                    "step_scheduler.max_steps: required when the dataset is streamed "
                    "(an IterableDataset has no length to count epochs in)"
                )
            num_epochs = _DEFAULT_EPOCHS if num_epochs is None else num_epochs
            max_steps = num_epochs * self.epoch_len
        # max_steps without num_epochs: as many epochs as the steps take (the steps end the run).
        self.num_epochs: float = math.inf if num_epochs is None else num_epochs
        self.max_steps = max_steps
        # Unset: every epoch end when epochs are saved (and the last step), else only the last step.
        default_every = self.epoch_len if self.save_checkpoint_every_epoch else None
        self.ckpt_every_steps = ckpt_every_steps or default_every or self.max_steps
        self.val_every_steps = val_every_steps
        self.step = start_step
        self.epoch = start_epoch
        self._epoch_step = 0
        self._last_in_epoch = False
        self._empty_passes = 0
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
        # One empty pass can be a resumed loader that stood at its epoch's end; two in a row would loop forever.
        self._empty_passes = self._empty_passes + 1 if batch is None else 0
        if self._empty_passes > 1:
            raise ConfigError(f"dataloader: epochs {self.epoch - 1} and {self.epoch} gave no batches "
                              "(an empty dataset or stream?)")
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
        """Save every ``ckpt_every_steps``, at each epoch end (``save_checkpoint_every_epoch``), at the
        last step and on SIGTERM."""
        periodic = self.step % self.ckpt_every_steps == self.ckpt_every_steps - 1
        epoch_end = self.save_checkpoint_every_epoch and self._last_in_epoch
        return periodic or epoch_end or self.is_last_step or self.sigterm

    @property
    def is_gc_step(self) -> bool:
        """A full garbage collection after this step (``gc_every_steps``); never when unset."""
        return self.gc_every_steps is not None and self.step % self.gc_every_steps == 0

    @property
    def is_remote_log_step(self) -> bool:
        """Whether remote trackers get this step's metrics (``log_remote_every_steps``; every step when unset)."""
        every = self.log_remote_every_steps
        return every is None or self.step % every == every - 1 or self.is_last_step

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
