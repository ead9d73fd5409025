"""What a step with a non-finite loss or gradient norm does: stop the run, or drop that update.

A NaN or inf that reaches ``optimizer.step()`` turns every weight into NaN, and a run that saves
those weights and moves ``LATEST`` to them has lost its last good state. The check runs after
backward and clipping, before the update, on numbers the step computes anyway.
"""

from __future__ import annotations

import math
from typing import Literal

NanPolicy = Literal["error", "skip"]


class NonFiniteLossError(RuntimeError):
    """The run stopped at a step whose loss or gradient norm was NaN or infinite; one line."""


def should_skip_update(step: int, loss: float, grad_norm: float, policy: NanPolicy = "error") -> bool:
    """True when the update of ``step`` must be dropped (policy ``skip``); raises under policy ``error``."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return False
    if policy == "skip":
        return True
    raise NonFiniteLossError(
        f"step {step}: loss is {loss} and gradient norm {grad_norm}; stopped before the update so the weights and "
        f"checkpoints stay finite (lower optimizer.lr or set clip_grad_norm.max_norm; nan_policy: skip drops such "
        f"steps instead)"
    )
