"""A fresh run (``checkpoint.restore_from: none``) into a directory that holds an earlier run.

Appending to the earlier run's ``training.jsonl`` would mix two runs in one record and one loss
plot, and deleting it would lose a finished run. So its records, pointers and checkpoints move,
together, to ``earlier_runs/<date>-<time>/`` inside the same directory (a run directory of its own
that ``nemo-like plot`` still reads), and the run says so in one line.
"""

from __future__ import annotations

import logging
import os
import time

from nemo_like.components.checkpoint.pointers import LATEST, LOWEST_VAL, STEP_DIR, fsync_path

logger = logging.getLogger("nemo_like")

EARLIER_RUNS = "earlier_runs"
# What a run writes at the top of its checkpoint dir; anything else there is not ours and stays.
RUN_OUTPUTS = frozenset({"training.jsonl", "validation.jsonl", LATEST, LOWEST_VAL, "loss_curves.png",
                         "loss_curves.json", "metrics.json", "tensorboard"})


def earlier_run_entries(root: str) -> list[str]:
    """The names in ``root`` that an earlier run wrote (records, pointers, step directories, plots)."""
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if name in RUN_OUTPUTS or STEP_DIR.match(name))


def set_aside_earlier_run(root: str) -> str | None:
    """Move an earlier run's outputs in ``root`` to ``root/earlier_runs/<stamp>/``; returns that path, or None
    when ``root`` held none."""
    names = earlier_run_entries(root)
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(root, EARLIER_RUNS, stamp)
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(root, EARLIER_RUNS, f"{stamp}-{n}")
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(root, name), os.path.join(target, name))
    fsync_path(root)
    checkpoints = sum(1 for name in names if STEP_DIR.match(name))
    logger.info("checkpoint.restore_from none: %s held an earlier run (%s, %d checkpoint%s); moved to %s, so this "
                "run starts with empty records", root, ", ".join(n for n in names if n.endswith(".jsonl")) or
                "no records", checkpoints, "" if checkpoints == 1 else "s", target)
    return target
