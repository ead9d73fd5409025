"""`nemo-like tune`: a seeded TPE study on the tiny SFT task writes its table and a best recipe that reruns to
the same validation loss; a study killed mid-trial resumes to the same trials; config mistakes are one line."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_tune_common import (
    REPO, TINY_SFT, env_without_pytest, param_table, results, steps_run, tiny_env, val_losses, write_tune,
)

pytest.importorskip("optuna")

from nemo_like.cli_tune import tune_main  # noqa: E402

PARAMS = ["optimizer.lr", "peft.dim"]


def tuning(out_dir: Path, **extra) -> dict:
    return {
        "recipe": str(TINY_SFT),
        "output_dir": str(out_dir),
        "n_trials": 4,
        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 11},
        "search_space": {
            "optimizer.lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-1},
            "peft.dim": {"type": "categorical", "choices": [2, 4, 8]},
        },
        "overrides": {"peft": {"_target_": "nemo_like.components._peft.lora.PeftConfig",
                               "match_all_linear": True, "dim": 4, "alpha": 8}},
        **extra,
    }


@pytest.fixture(scope="module")
def tune_env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tune")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in tiny_env(root, tiny_model_dir).items():
            mp.setenv(key, value)
        yield root


@pytest.fixture(scope="module")
def study_a(tune_env):
    out = tune_env / "study_a"
    config = write_tune(tune_env / "tune_a.yaml", tuning(out))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert tune_main(["-c", str(config)]) == 0
    return {"out": out, "config": config, "printed": printed.getvalue()}


@pytest.mark.slow
def test_study_writes_its_table_best_recipe_plot_and_keeps_one_checkpoint(study_a):
    out = study_a["out"]
    rows = results(out)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert all(float(r["val_loss"]) > 0 and int(r["steps"]) == 4 and r["run_dir"] for r in rows)
    assert {r["peft.dim"] for r in rows} <= {"2", "4", "8"}
    assert (out / "best_trial.yaml").is_file() and (out / "optimization.png").stat().st_size > 0
    best = min(rows, key=lambda r: float(r["val_loss"]))
    kept = [r["number"] for r in rows if any(Path(r["run_dir"]).glob("epoch_*_step_*"))]
    assert kept == [best["number"]]  # keep_checkpoints: best
    for r in rows:  # every trial ran the recipe with its own parameters, into its own folder
        text = (Path(r["run_dir"]) / "trial.yaml").read_text()
        assert f"checkpoint_dir: {r['run_dir']}" in text and f"dim: {r['peft.dim']}" in text


@pytest.mark.slow
def test_best_trial_yaml_reruns_to_the_same_validation_loss(study_a, tune_env):
    out = study_a["out"]
    best = min(results(out), key=lambda r: float(r["val_loss"]))
    rerun = tune_env / "rerun"
    proc = subprocess.run([sys.executable, "-m", "nemo_like.cli", "finetune", "-c", str(out / "best_trial.yaml"),
                           "--checkpoint.checkpoint_dir", str(rerun)], cwd=REPO, capture_output=True, text=True,
                          env=env_without_pytest(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert val_losses(rerun)[-1] == pytest.approx(float(best["val_loss"]), abs=1e-6)
    assert val_losses(rerun) == pytest.approx(val_losses(Path(best["run_dir"])), abs=1e-6)


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_trials_as_an_uninterrupted_one(study_a, tune_env, capsys):
    """Same seed, another folder: the parameters are study A's; a SIGKILL of the tuner's process group during
    trial 1 leaves it RUNNING, and the rerun records it FAIL (interrupted), keeps trial 0 and runs slot 2 again."""
    out = tune_env / "study_b"
    config = write_tune(tune_env / "tune_b.yaml", tuning(out))
    proc = subprocess.Popen([sys.executable, "-m", "nemo_like.cli_tune", "-c", str(config)], cwd=REPO,
                            env=env_without_pytest(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "trial_1" / "training.jsonl").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the study ended before trial 1 started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    trial_0_log = (out / "trial_0" / "run.log").stat().st_mtime_ns

    assert tune_main(["-c", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "trial_1: left running by a stopped tuner; recorded FAIL (interrupted)" in printed
    assert "1 of 4 trials done" in printed
    rows = results(out)
    assert [(r["number"], r["state"]) for r in rows] == [
        ("0", "COMPLETE"), ("1", "FAIL"), ("2", "COMPLETE"), ("3", "COMPLETE"), ("4", "COMPLETE")]
    assert rows[1]["reason"] == "interrupted"
    assert (out / "trial_0" / "run.log").stat().st_mtime_ns == trial_0_log  # not run again
    assert param_table(out, PARAMS) == param_table(study_a["out"], PARAMS)
    assert [steps_run(out / f"trial_{n}") for n in (0, 2, 3, 4)] == [4, 4, 4, 4]
    assert tune_main(["-c", str(config)]) == 0  # complete: nothing more runs
    assert len(results(out)) == 5


@pytest.mark.slow
def test_one_progress_line_per_trial(study_a):
    lines = [line for line in study_a["printed"].splitlines() if line.startswith("trial ")]
    assert [line.split(":")[0] for line in lines] == ["trial 1/4", "trial 2/4", "trial 3/4", "trial 4/4"]
    assert all(" finished val_loss=" in line and "{optimizer.lr: " in line and "peft.dim: " in line for line in lines)
    assert "best: trial_" in study_a["printed"]


@pytest.mark.parametrize("change, key, message", [
    ({"n_trails": 3}, "tuning.n_trails", "not a tuning key; did you mean 'n_trials'?"),
    ({"search_space": {"optimizer.lr": {"type": "logunif", "low": 1, "high": 2}}},
     "tuning.search_space.optimizer.lr.type", "'logunif' is not one of"),
    ({"search_space": {"optimizer.lr": {"type": "loguniform", "low": 0, "high": 2}}},
     "tuning.search_space.optimizer.lr.low", "a log-scaled range must start above 0"),
    ({"search_space": {"optimzer.lr": {"type": "float", "low": 0.1, "high": 2}}},
     "tuning.search_space.optimzer.lr", "'optimzer.lr' names no section of the sft recipe"),
    ({"objectives": [{"metric": "val_loss"}, {"metric": "tps", "direction": "max"}],
      "pruner": {"_target_": "optuna.pruners.MedianPruner"}}, "tuning.pruner", "single-objective"),
    ({"sampler": {"_target_": "optuna.samplers.TPESampler", "n_startup": 3}}, "tuning.sampler", "n_startup"),
    ({"sampler": "os.system"}, "tuning.sampler", "refusing 'os.system'"),
    ({"recipe": "missing.yaml"}, "tuning.recipe", "recipe file 'missing.yaml' does not exist"),
    ({"keep_checkpoints": "some"}, "tuning.keep_checkpoints", "'some' is not one of best, all, none"),
    ({"overrides": {"step_scheduler.max_steps": "many"}}, "step_scheduler.max_steps (tuning.overrides", "many"),
])
def test_config_mistakes_are_one_line_before_any_trial(tune_env, tmp_path, capsys, change, key, message):
    base = tuning(tmp_path / "out")
    if "overrides" in change:
        change = {"overrides": {**base["overrides"], **change["overrides"]}}
    config = write_tune(tmp_path / "tune.yaml", {**base, **change})
    assert tune_main(["-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}") and err.count("\n") == 1, err
    assert message in err, err
    if key.startswith("tuning."):
        assert f"({config}:" in err, err
    assert not list((tmp_path / "out").glob("trial_*"))


def test_help_shows_an_example(capsys):
    assert tune_main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert "nemo-like tune -c TUNE.yaml" in printed and "search_space:" in printed
