"""Seconds from SIGTERM to process exit for the shipped SmolLM2 recipes: the step in flight finishes,
a checkpoint is saved, and the process exits 143. Schedulers give 30 s (Slurm's KillWait, Kubernetes'
terminationGracePeriodSeconds) before SIGKILL.

    python benchmarks/preemption_exit.py [--recipes sft_quickstart.yaml sft_full.yaml] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(recipe: str, after_step: int) -> dict[str, float | int]:
    """Start the recipe, send SIGTERM once step ``after_step`` has been logged, time the exit."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "examples/llm_finetune/finetune.py", "--config", f"recipes/smollm2_135m/{recipe}",
               "--checkpoint.checkpoint_dir", tmp, "--step_scheduler.max_steps", "50",
               "--step_scheduler.ckpt_every_steps", "1000", "--generation_eval", "none"]
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, HF_HUB_OFFLINE="1"))
        lines: list[str] = []
        sent = threading.Event()
        signalled_at = 0.0
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not sent.is_set() and line.startswith(f"step {after_step}/"):
                signalled_at = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                sent.set()
        code = proc.wait()
        exited_at = time.perf_counter()
        if not sent.is_set():
            raise RuntimeError("".join(lines[-20:]))
        saved = [line for line in lines if line.startswith("checkpoint saved")]
        step = [line for line in lines if line.startswith(f"step {after_step + 1}/")]
        return {"seconds": exited_at - signalled_at, "exit_code": code, "saved": len(saved),
                "save_line": saved[-1].strip() if saved else "", "step_line": step[-1].strip() if step else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["sft_quickstart.yaml", "sft_full.yaml"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--after-step", type=int, default=1)
    args = parser.parse_args()
    for round_ in range(args.rounds):
        for recipe in args.recipes:  # alternating, so both see the same machine load
            result = one_run(recipe, args.after_step)
            print(f"round {round_} {recipe}: {result['seconds']:.1f} s from SIGTERM to exit, exit code "
                  f"{result['exit_code']}, checkpoints saved {result['saved']}", flush=True)
            print(f"  {result['step_line'][:120]}\n  {result['save_line']}", flush=True)


if __name__ == "__main__":
    main()
