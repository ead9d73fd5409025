"""A save that does not fit on the disk: refused up front when it cannot fit, one line when it runs out.

The bytes a save needs are estimated from tensor sizes (weights or adapter, the consolidated
copy, the optimizer state); the small files (config, tokenizer, RNG) are left out, so the
estimate is a floor. A write that fails with ENOSPC/EDQUOT mid-save becomes the same kind
of one-line error, and the caller removes the partial ``.tmp_*`` directory at once, since
leaving it would keep the disk full for everything else on the machine.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

import torch
from torch import nn

from nemo_like.components.checkpoint import dcp
from nemo_like.components.checkpoint.errors import CheckpointError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


class DiskFullError(CheckpointError):
    """A save that does not fit where it is written; nothing of it is left behind."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()  # a DTensor's numel() is global: what the save writes in all


def model_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of the weights a save writes: unique parameters (tied ones once) and persistent buffers."""
    names = set(model.state_dict().keys())
    params = [p for n, p in model.named_parameters() if n in names and (p.requires_grad or not trainable_only)]
    buffers = [] if trainable_only else [b for n, b in model.named_buffers() if n in names]
    return sum(_nbytes(t) for t in params + buffers)


def optimizer_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return sum(_nbytes(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def checkpoint_bytes(model: nn.Module, optimizer: Any = None, trainable_only: bool = False,
                     consolidated: bool = True, shares_weights: bool = False) -> int:
    """What one step directory will take, from tensor sizes: weights (or adapter), consolidated copy, optimizer.
    ``shares_weights``: full weights in safetensors are one file under two names (see ``weight_link``)."""
    total = model_bytes(model, trainable_only) + optimizer_bytes(optimizer)
    shared = shares_weights and not trainable_only
    if consolidated and not shared and not getattr(model, "is_quantized", False):
        total += model_bytes(model)  # the consolidated directory holds the whole (merged) model
    return total


def free_bytes(path: str) -> int | None:
    """Free bytes where ``path`` is (or would be) created; None when the filesystem does not say."""
    here = os.path.abspath(path)
    while not os.path.exists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    try:
        usage = shutil.disk_usage(here)
    except OSError:
        return None
    return usage.free if usage.total > 0 else None


def human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n} bytes ({n / size:.1f} {unit})"
    return f"{n} bytes"


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain (torch and safetensors wrap it; DCP keeps per-rank failures)."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(word in str(e) for word in _FULL_WORDS):
            return True
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint.api.CheckpointException
        if isinstance(failures, dict):
            todo += [f for f in failures.values() if isinstance(f, BaseException)]
            todo += [getattr(f, "exception", None) for f in failures.values()]
    return False


def disk_full_error(step: int, where: str, writing: str | None, needed: int, free: int | None,
                    latest: str | None) -> DiskFullError:
    """The one line for a save that ran out of space (``where``: the partial directory, already removed)."""
    file = f" while writing {writing}" if writing else ""
    return DiskFullError(
        f"checkpoint of step {step}: no space left on device{file}: the save to {where} needs more than "
        f"{human(needed)} (its tensors alone), {human(free)} were free when it began; the partial directory was "
        f"removed and LATEST still names {latest or 'no checkpoint'} (free some space or set "
        f"checkpoint.checkpoint_dir elsewhere)"
    )


def refuse_if_no_room(root: str, step: int, needed: int, latest: str | None) -> int | None:
    """Before writing anything: refuse when the estimate exceeds the free space; returns the free bytes.

    Collective when several ranks run: the ranks agree, so all refuse together.
    """
    free = free_bytes(root)
    short = dcp.all_ranks_max(int(free is not None and needed > free))
    if short:
        raise DiskFullError(
            f"checkpoint of step {step}: not enough space in {root}: the save needs more than {human(needed)} "
            f"(its tensors alone), {human(free)} are free; nothing was written and LATEST still names "
            f"{latest or 'no checkpoint'} (free some space or set checkpoint.checkpoint_dir elsewhere)"
        )
    return free
