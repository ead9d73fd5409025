"""An Oumi-style tune YAML (the recipe beside `tuning:`, Oumi's field names) with two objectives runs and
writes its Pareto front: pareto_front.csv and one rerunnable recipe per Pareto trial."""

from __future__ import annotations

import csv

import pytest
import yaml

from test_tune_common import TINY_SFT, results, tiny_env, write_tune

pytest.importorskip("optuna")

from nemo_like.cli_tune import tune_main  # noqa: E402

pytestmark = pytest.mark.slow  # every test reads a study of several training processes


@pytest.fixture(scope="module")
def oumi_study(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tune_oumi")
    tuning = {
        "n_trials": 3,
        "output_dir": str(root / "out"),
        "tunable_training_params": {"learning_rate": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-1}},
        "tunable_peft_params": {"lora_r": {"type": "categorical", "choices": [2, 8]}},
        "fixed_training_params": {"trainer_type": "TRL_SFT", "max_steps": 4, "per_device_train_batch_size": 2},
        "fixed_peft_params": {"q_lora": False, "lora_alpha": 8, "peft._target_": "nemo_like.components._peft.lora.PeftConfig",
                              "peft.match_all_linear": True},
        "evaluation_metrics": ["eval_loss", "tps"],
        "evaluation_direction": ["minimize", "maximize"],
        "tuner_type": "OPTUNA",
        "tuner_sampler": "RandomSampler",
    }
    config = write_tune(root / "tune.yaml", tuning, recipe_text=TINY_SFT.read_text())
    with pytest.MonkeyPatch.context() as mp:
        for key, value in tiny_env(root, tiny_model_dir).items():
            mp.setenv(key, value)
        assert tune_main(["-c", str(config)]) == 0
    return root / "out"


def test_oumi_names_map_to_the_recipe(oumi_study):
    rows = results(oumi_study)
    assert len(rows) == 3 and {r["state"] for r in rows} == {"COMPLETE"}
    assert set(rows[0]) >= {"optimizer.lr", "peft.dim", "val_loss", "tps"}
    recipe = yaml.safe_load((oumi_study / "trial_0" / "trial.yaml").read_text())
    assert recipe["optimizer"]["lr"] == pytest.approx(float(rows[0]["optimizer.lr"]))
    assert recipe["peft"]["dim"] == int(rows[0]["peft.dim"]) and recipe["peft"]["alpha"] == 8
    assert recipe["step_scheduler"]["max_steps"] == 4 and recipe["step_scheduler"]["local_batch_size"] == 2


def test_two_objectives_write_the_pareto_front(oumi_study):
    with open(oumi_study / "pareto_front.csv", newline="") as handle:
        front = list(csv.DictReader(handle))
    assert front and not (oumi_study / "best_trial.yaml").exists()
    rows = results(oumi_study)
    for row in front:  # no trial is better in both
        loss, tps = float(row["val_loss"]), float(row["tps"])
        assert not any(float(r["val_loss"]) < loss and float(r["tps"]) > tps for r in rows)
        recipe = yaml.safe_load((oumi_study / "pareto" / f"trial_{row['number']}.yaml").read_text())
        assert "callbacks" not in recipe and recipe["optimizer"]["lr"] == pytest.approx(float(row["optimizer.lr"]))
    assert (oumi_study / "optimization.png").stat().st_size > 0
