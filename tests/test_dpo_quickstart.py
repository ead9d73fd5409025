"""The shipped DPO recipe on the embedded SmolLM2-135M-Instruct: held-out reward accuracy and the rate of
greedy answers in the preferred format, before and after training, from the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_shipped_dpo_recipe_teaches_the_preferred_format(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "examples/llm_dpo/dpo.py", "--config", "recipes/smollm2_135m/dpo_lora.yaml",
           "--checkpoint.checkpoint_dir", str(ckpt), "--generation_eval.limit", "50",
           "--step_scheduler.max_steps", "12", "--step_scheduler.val_every_steps", "12"]  # half the shipped 24
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=1200)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = dict(re.findall(r"held-out pairs (before|after) training: reward accuracy ([0-9.]+)", proc.stderr))
    rate = dict(re.findall(r"held-out shows_answer_format rate (before|after) training: ([0-9.]+)", proc.stderr))
    print(f"reward accuracy {accuracy}, answer-format rate {rate}, {seconds:.0f} s")
    assert float(accuracy["before"]) == 0.0 and float(accuracy["after"]) >= 0.9, accuracy
    assert float(rate["after"]) - float(rate["before"]) >= 0.4, rate
    assert (ckpt / (ckpt / "LATEST").read_text() / "model" / "adapter_model.safetensors").is_file()
