"""Pretraining from random initialisation through examples/llm_pretrain/pretrain.py's recipe: a model built
from a config learns the shipped text, and a run killed after a checkpoint resumes exactly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import REPO
from crash_hooks import killed_after_step
from nemo_like.recipes.llm.run import main

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

RECIPE = str(REPO / "recipes" / "smollm2_135m" / "pretrain_scratch_text.yaml")
TINY = ["--model.config.hidden_size", "64", "--model.config.intermediate_size", "128",
        "--model.config.num_hidden_layers", "2", "--model.config.num_attention_heads", "4",
        "--model.config.num_key_value_heads", "2", "--optimizer.lr", "3e-3", "--lr_scheduler.lr_warmup_steps", "3",
        "--step_scheduler.max_steps", "10", "--step_scheduler.ckpt_every_steps", "3",
        "--step_scheduler.val_every_steps", "10", "--checkpoint.save_consolidated", "false",
        "--dataset.seq_length", "128", "--validation_dataset.seq_length", "128",
        "--validation_dataset.limit_dataset_samples", "8"]


def run(ckpt: Path) -> int:
    return main(["--config", RECIPE, *TINY, "--checkpoint.checkpoint_dir", str(ckpt)])


def losses(ckpt: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (ckpt / "training.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pretraining_from_scratch_learns_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    reference = tmp_path / "reference"
    assert run(reference) == 0
    curve = losses(reference)
    assert len(curve) == 10 and curve[-1] < curve[0] - 1.0  # random init: ~10.8 falls fast on the shipped text

    killed = tmp_path / "killed"
    assert killed_after_step(5, lambda: run(killed)) == signal.SIGKILL
    assert (killed / "LATEST").read_text().strip().endswith("_step_5")
    assert run(killed) == 0
    assert losses(killed) == curve
