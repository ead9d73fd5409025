"""Environment hooks that let tests crash a real saving process at the worst moments; inert when unset.

- ``NEMO_LIKE_TEST_KILL_AFTER_STEP=S``: SIGKILL this process as soon as the checkpoint of
  step ``S`` is complete (pointers moved, old ones pruned).
- ``NEMO_LIKE_TEST_STALL_SAVE=S``: while saving step ``S``, print a line starting with
  ``test hook: stalling`` to stderr after the model is written, then sleep forever.
- ``NEMO_LIKE_TEST_SAVE_PAUSE=SECONDS``: sleep that long at each stage of every save (after
  the model, after the other files, after the manifest, after the rename, after ``LATEST``),
  so that a kill at a random moment lands inside a save more often.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def stall_hook(step: int, where: str) -> None:
    if os.environ.get("NEMO_LIKE_TEST_STALL_SAVE") == str(step):
        print(f"test hook: stalling the save of step {step} in {where}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


def kill_hook(step: int) -> None:
    if os.environ.get("NEMO_LIKE_TEST_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def pause_hook() -> None:
    pause = os.environ.get("NEMO_LIKE_TEST_SAVE_PAUSE")
    if pause:
        time.sleep(float(pause))
