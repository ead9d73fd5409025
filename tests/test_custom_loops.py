"""The second way to use the library: examples/custom_loop's scripts train with its parts in a loop of their own
(their loss falls), under torchrun too (2 ranks give the single-process losses), and leave checkpoints that the
library's tools accept (`nemo-like merge-lora`, `nemo-like eval`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples" / "custom_loop"
DATA = str(REPO / "data" / "quickstart" / "train.jsonl")


def _run(args: list[str], cwd: Path, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"] \
        if torchrun else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


def _losses(stdout: str) -> list[float]:
    return [float(line.split()[-1]) for line in stdout.splitlines() if line.startswith("step ")]


def _checkpoint(stdout: str) -> Path:
    return Path(next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("checkpoint: ")))


@pytest.mark.slow
@pytest.mark.parametrize("script,extra", [("sft_loop.py", []), ("sft_loop.py", ["--packed", "256"]),
                                          ("own_loss.py", [])])
def test_a_custom_loop_trains_and_leaves_a_checkpoint_the_tools_accept(script, extra, tiny_model_dir, tmp_path):
    out = _run([str(EXAMPLES / script), "--model", tiny_model_dir, "--data", DATA, "--out", str(tmp_path / "run"),
                "--steps", "10", "--lr", "3e-3", *extra], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = _losses(out.stdout)
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.2, losses
    step = _checkpoint(out.stdout)
    assert (step / "model" / "adapter_config.json").is_file() and (step / "model" / "consolidated").is_dir()
    merged = tmp_path / "merged"
    done = _run(["-m", "nemo_like.cli", "merge-lora", "--adapter", str(step / "model"), "--output", str(merged),
                 "--base", tiny_model_dir], tmp_path)
    assert done.returncode == 0 and (merged / "config.json").is_file(), done.stderr[-2000:]
    if script == "own_loss.py":  # the label-smoothed loss sits above the plain one on the same model
        assert losses[0] > 0


@pytest.mark.slow
def test_the_checkpoint_of_a_custom_loop_scores_with_nemo_like_eval(tiny_model_dir, tmp_path):
    out = _run([str(EXAMPLES / "sft_loop.py"), "--model", tiny_model_dir, "--data", DATA, "--out",
                str(tmp_path / "run"), "--steps", "2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = _run(["-m", "nemo_like.cli", "eval", "--checkpoint", str(_checkpoint(out.stdout)), "--tasks",
                   "nemo_like_quickstart", "--limit", "3", "--batch-size", "3"], tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    results = list(_checkpoint(out.stdout).rglob("*results*.json"))
    assert results and "nemo_like_quickstart" in json.loads(results[0].read_text())["results"]


@pytest.mark.slow
def test_the_fsdp2_loop_on_two_ranks_gives_the_single_process_losses(tiny_model_dir, tmp_path):
    args = [str(EXAMPLES / "fsdp2_loop.py"), "--model", tiny_model_dir, "--data", DATA, "--steps", "4",
            "--batch-size", "4"]
    one = _run([*args, "--out", str(tmp_path / "one")], tmp_path)
    two = _run([*args, "--out", str(tmp_path / "two")], tmp_path, torchrun=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert _losses(two.stdout) == pytest.approx(_losses(one.stdout), abs=1e-4)
    step = _checkpoint(two.stdout)
    merged = tmp_path / "merged"
    done = _run(["-m", "nemo_like.cli", "merge-lora", "--adapter", str(step / "model"), "--output", str(merged),
                 "--base", tiny_model_dir], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
