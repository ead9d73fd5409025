"""The shipped GRPO recipe on the embedded SmolLM2-135M-Instruct: held-out greedy accuracy on single-digit
additions before and after training, from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_shipped_grpo_recipe_lifts_held_out_accuracy(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "examples/llm_grpo/grpo.py", "--config", "recipes/smollm2_135m/grpo_arithmetic.yaml",
           "--checkpoint.checkpoint_dir", str(ckpt)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=1200)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = dict(re.findall(r"held-out prompts (before|after) training: greedy accuracy ([0-9.]+)", proc.stderr))
    print(f"held-out greedy accuracy {accuracy}, {seconds:.0f} s")
    assert float(accuracy["after"]) - float(accuracy["before"]) >= 0.2, accuracy
    records = [json.loads(line) for line in (ckpt / "training.jsonl").read_text().splitlines()]
    assert {"rewards/exact_answer/mean", "frac_reward_zero_std", "generation_s", "update_s"} <= set(records[0])
    assert (ckpt / (ckpt / "LATEST").read_text() / "model" / "adapter_model.safetensors").is_file()
