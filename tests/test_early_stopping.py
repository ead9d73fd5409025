"""EarlyStopping from a recipe's ``callbacks:`` list ends a diverging run with a final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from nemo_like.components.callbacks import EarlyStopping, TrainState
from nemo_like.recipes.llm.run import main

PATIENCE = 2


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _reference_stop(values: list[float], patience: int, threshold: float = 0.0) -> tuple[int, int | None]:
    """The rule written out plainly: (index of the best value, index where patience runs out or None)."""
    best, best_i, wait = values[0], 0, 0
    for i, value in enumerate(values[1:], start=1):
        if value < best - threshold:
            best, best_i, wait = value, i, 0
        else:
            wait += 1
            if wait >= patience:
                return best_i, i
    return best_i, None


@pytest.fixture()
def recipe(tmp_path, monkeypatch, tiny_model_dir, addition_data) -> Path:
    monkeypatch.setenv("TEST_MODEL_DIR", tiny_model_dir)
    monkeypatch.setenv("TEST_TRAIN_JSONL", addition_data["train"])
    monkeypatch.setenv("TEST_VAL_JSONL", addition_data["validation"])
    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path / "ckpt"))
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny_sft.yaml").read_text())
    config["callbacks"] = [
        {"_target_": "nemo_like.components.callbacks.EarlyStopping", "monitor": "val_loss", "patience": PATIENCE},
        {"_target_": "nemo_like.components.callbacks.JSONMetricsLogger"},
    ]
    path = tmp_path / "early_stop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_rising_validation_loss_stops_the_run_and_lowest_val_names_the_best_step(recipe, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    # A learning rate ten times the recipe's: validation loss falls for a few steps, then climbs.
    argv = ["--config", str(recipe), "--optimizer.lr", "1e-2", "--step_scheduler.max_steps", "30",
            "--step_scheduler.val_every_steps", "1", "--step_scheduler.ckpt_every_steps", "1"]
    assert main(argv) == 0
    stderr = capsys.readouterr().err
    val = _jsonl(ckpt / "validation.jsonl")
    losses = [r["val_loss"] for r in val]
    best_i, stop_i = _reference_stop(losses, PATIENCE)
    assert stop_i is not None and stop_i == len(val) - 1, losses  # stopped exactly where the rule says
    best_step, stop_step = val[best_i]["step"], val[stop_i]["step"]
    assert best_step > 0 and stop_step == best_step + PATIENCE < 29  # it did fall first, and it stopped early
    assert [r["step"] for r in _jsonl(ckpt / "training.jsonl")][-1] == stop_step
    dirs = {int(p.name.rsplit("_", 1)[1]): p.name for p in ckpt.glob("epoch_*_step_*")}
    assert (ckpt / "LOWEST_VAL").read_text().strip() == dirs[best_step]
    assert (ckpt / "LATEST").read_text().strip() == dirs[stop_step]  # the final checkpoint of the stop
    said = [line for line in stderr.splitlines() if line.startswith("early stopping")]
    assert len(said) == 1 and f"(step {best_step})" in said[0] and f"patience {PATIENCE}" in said[0], stderr[-2000:]
    summary = json.loads((ckpt / "metrics.json").read_text())
    assert summary["best"] == {"step": best_step, "val_loss": losses[best_i]}
    assert summary["stopped_early"].startswith("early stopping") and summary["steps_done"] == stop_step + 1


def test_early_stopping_rule_threshold_mode_and_resume_replay():
    values = [1.0, 0.9, 0.895, 0.899, 0.7]
    rule = EarlyStopping(patience=2, threshold=0.01)
    reasons = [rule.update(v, step) for step, v in enumerate(values[:4])]
    assert reasons[:3] == [None, None, None] and reasons[3] is not None  # 0.895 is not 0.01 better than 0.9
    assert (rule.best, rule.best_step) == (0.9, 1)
    assert _reference_stop(values, 2, 0.01) == (1, 3)

    up = EarlyStopping(monitor="accuracy", mode="max", patience=1)
    assert up.update(0.5, 0) is None and up.update(0.6, 1) is None and up.update(0.6, 2) is not None
    assert EarlyStopping().update(float("nan"), 4) == "val_loss is nan at step 4"

    # A resumed run replays the validations it already logged, so it stops where the whole run would.
    resumed = EarlyStopping(patience=2)
    state = TrainState(max_steps=10, run_dir=".", val_history=[{"step": s, "val_loss": v} for s, v in
                                                               enumerate([1.0, 0.8, 0.9])])
    resumed.on_train_start(state)
    resumed.on_validation_end(state, {"step": 3, "val_loss": 0.95})
    assert state.should_stop and "step 1" in state.stop_reason


def test_a_misspelled_monitor_is_named(tmp_path):
    state = TrainState(max_steps=3, run_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'val_los' is not a logged metric.*val_loss"):
        EarlyStopping(monitor="val_los").on_validation_end(state, {"step": 0, "epoch": 0, "val_loss": 1.0})
