"""Loss plots of a run and the learning-rate sweep table, checked against the runs' own metric files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from nemo_like.cli import main as cli
from nemo_like.recipes.llm.run import main as finetune

TINY = str(REPO / "tests" / "configs" / "tiny_sft.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def env(tiny_sft_env):
    return tiny_sft_env["tmp"]


def test_a_run_ends_with_a_loss_plot_whose_data_matches_the_metric_files(env, capsys):
    ckpt = env / "ckpt"
    assert finetune(["--config", TINY, "--step_scheduler.max_steps", "5", "--lr_scheduler.lr_decay_style", "cosine",
                     "--lr_scheduler.lr_warmup_steps", "1"]) == 0
    png, data = ckpt / "loss_curves.png", json.loads((ckpt / "loss_curves.json").read_text())
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    train, val = _jsonl(ckpt / "training.jsonl"), _jsonl(ckpt / "validation.jsonl")
    assert data["train_loss"] == [[r["step"], r["loss"]] for r in train]
    assert data["val_loss"] == [[r["step"], r["val_loss"]] for r in val] and len(val) >= 2
    assert data["lr"] == [[r["step"], r["lr"]] for r in train]
    assert len({lr for _, lr in data["lr"]}) > 1  # the schedule's shape is there, not a flat line

    # `nemo-like plot RUN_DIR` redraws it from the files alone.
    capsys.readouterr()
    assert cli(["plot", str(ckpt), "--out", str(env / "replot")]) == 0
    assert json.loads((env / "replot" / "loss_curves.json").read_text())["val_loss"] == data["val_loss"]
    assert (env / "replot" / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
    best_step, best = min(data["val_loss"], key=lambda sv: sv[1])
    assert f"lowest validation loss {best:.4f} at step {best_step}" in capsys.readouterr().out


def test_learning_rate_sweep_table_marks_the_best_run_and_rising_validation_loss(env, capsys):
    lrs = ["1e-3", "1e-2", "3e-2"]
    runs = []
    for lr in lrs:
        run = env / f"lr_{lr}"
        assert finetune(["--config", TINY, "--optimizer.lr", lr, "--step_scheduler.max_steps", "12",
                         "--step_scheduler.val_every_steps", "4", "--step_scheduler.ckpt_every_steps", "12",
                         "--checkpoint.checkpoint_dir", str(run)]) == 0
        runs.append(run)
    capsys.readouterr()
    assert cli(["plot", *map(str, runs), "--out", str(env / "sweep")]) == 0
    printed = capsys.readouterr().out
    sweep = json.loads((env / "sweep" / "sweep.json").read_text())
    assert (env / "sweep" / "sweep.png").read_bytes()[:8] == PNG_MAGIC

    # The reference: every run's validation.jsonl, compared step by step.
    val = {lr: {r["step"]: r["val_loss"] for r in _jsonl(run / "validation.jsonl")} for lr, run in zip(lrs, runs)}
    assert sweep["labels"] == [f"LR={lr}" for lr in lrs]
    assert sweep["steps"] == [3, 7, 11]
    best_lr = min(lrs, key=lambda lr: val[lr][11])
    assert sweep["best"] == f"LR={best_lr}"
    rising = {f"LR={lr}": [s for a, s in zip([3, 7], [7, 11]) if val[lr][s] > val[lr][a]] for lr in lrs}
    assert sweep["rising"] == {k: v for k, v in rising.items() if v}
    assert sweep["rising"], "the highest learning rate should overfit this tiny set"

    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table[0] == "| Step | " + " | ".join(
        f"LR={lr} Val Loss" + (" (best)" if lr == best_lr else "") for lr in lrs) + " |"
    for line, step in zip(table[2:], [3, 7, 11]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == str(step)
        lowest = min(val[lr][step] for lr in lrs)
        for lr, cell in zip(lrs, cells[1:]):
            assert cell.split()[0] == f"{val[lr][step]:.4f}"
            assert ("*" in cell) == (val[lr][step] == lowest)
            assert ("(rising!)" in cell) == (step in rising[f"LR={lr}"])
    assert f"best: LR={best_lr}" in printed
