"""Crash a real training process at the worst moments of a save; test code only.

The checkpointer calls its observers at each stage of every save. This observer reads the
environment of the process it runs in, and does nothing when these are unset:

- ``NEMO_LIKE_TEST_KILL_AFTER_STEP=S``: SIGKILL the process as soon as the checkpoint of step
  ``S`` is complete (pointers moved, old ones pruned).
- ``NEMO_LIKE_TEST_STALL_SAVE=S``: while saving step ``S``, print a line starting with
  ``test hook: stalling`` to stderr once the model is written, then sleep forever.
- ``NEMO_LIKE_TEST_SAVE_PAUSE=SECONDS``: sleep that long at each stage of every save, so that a
  kill at a random moment lands inside a save more often.

A forked training child calls ``install()`` (``killed_after_step`` does it for the common case);
a spawned process runs ``python tests/crash_hooks.py SCRIPT ARGS...`` (see ``command``), which
installs it and runs ``SCRIPT`` as ``__main__``.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from nemo_like.components.checkpoint.checkpointing import Checkpointer


def crash_observer(stage: str, step: int, directory: str) -> None:
    if stage == "model_written" and os.environ.get("NEMO_LIKE_TEST_STALL_SAVE") == str(step):
        print(f"test hook: stalling the save of step {step} in {directory}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
    if stage == "saved" and os.environ.get("NEMO_LIKE_TEST_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("NEMO_LIKE_TEST_SAVE_PAUSE")
    if pause and stage != "saved":
        time.sleep(float(pause))


def install() -> None:
    if crash_observer not in Checkpointer.observers:
        Checkpointer.observers.append(crash_observer)


def killed_after_step(step: int, train: Callable[[], Any]) -> int:
    """Run ``train()`` in a forked child that is SIGKILLed right after step ``step``'s checkpoint; the
    signal that ended the child (a child that ends any other way returns 0)."""
    pid = os.fork()
    if pid == 0:
        install()
        os.environ["NEMO_LIKE_TEST_KILL_AFTER_STEP"] = str(step)
        try:
            train()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def command(script: str, *args: str) -> list[str]:
    """The command line that runs ``script`` with the crash observer installed."""
    return [sys.executable, __file__, script, *args]


if __name__ == "__main__":
    install()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
