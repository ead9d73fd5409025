"""Pruning across processes: on a learning-rate range whose top half diverges, a MedianPruner fed each
validation loss by the trials' OptunaPruning callback spends far fewer steps than the unpruned study
and picks the same region."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from test_tune_common import TINY_SFT, results, steps_run, tiny_env, write_tune

pytest.importorskip("optuna")

from nemo_like.cli_tune import tune_main  # noqa: E402

pytestmark = pytest.mark.slow  # every test reads a study of several training processes

LOW, HIGH = 1.0e-3, 10.0  # lr above ~0.1 blows the tiny model's loss up to tens or hundreds


def tuning(out_dir: Path, **extra) -> dict:
    return {
        "recipe": str(TINY_SFT),
        "output_dir": str(out_dir),
        "n_trials": 4,
        "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 5},
        "search_space": {"optimizer.lr": {"type": "loguniform", "low": LOW, "high": HIGH}},
        "overrides": {"step_scheduler.max_steps": 24, "step_scheduler.val_every_steps": 2},
        "keep_checkpoints": "none",
        **extra,
    }


@pytest.fixture(scope="module")
def studies(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tune_pruning")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in tiny_env(root, tiny_model_dir).items():
            mp.setenv(key, value)
        pruned = write_tune(root / "pruned.yaml", tuning(root / "pruned", pruner={
            "_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 2}))
        plain = write_tune(root / "plain.yaml", tuning(root / "plain", n_jobs=2))  # two trials at a time
        assert tune_main(["-c", str(pruned)]) == 0
        assert tune_main(["-c", str(plain)]) == 0
    return {"pruned": root / "pruned", "plain": root / "plain"}


def total_steps(out_dir: Path) -> int:
    return sum(steps_run(Path(row["run_dir"])) for row in results(out_dir))


def best_lr(out_dir: Path) -> float:
    done = [r for r in results(out_dir) if r["state"] == "COMPLETE"]
    return float(min(done, key=lambda r: float(r["val_loss"]))["optimizer.lr"])


def test_pruning_spends_at_least_40_percent_fewer_steps(studies):
    pruned, plain = results(studies["pruned"]), results(studies["plain"])
    assert {r["state"] for r in plain} == {"COMPLETE"}
    assert "PRUNED" in {r["state"] for r in pruned}
    for row in pruned:
        if row["state"] == "PRUNED":
            assert (Path(row["run_dir"]) / "PRUNED.json").is_file() and "val_loss" in row["reason"]
            assert int(row["steps"]) < 24
    assert total_steps(studies["pruned"]) <= 0.6 * total_steps(studies["plain"])


def test_pruned_and_unpruned_pick_the_same_region(studies):
    """The same seed proposes the same learning rates in both (also with two trials at a time); both bests lie
    in the lower, non-diverging half of the range and within one order of magnitude of each other."""
    lrs = [sorted(float(r["optimizer.lr"]) for r in results(studies[k])) for k in ("pruned", "plain")]
    assert lrs[0] == lrs[1]
    middle = math.sqrt(LOW * HIGH)
    a, b = best_lr(studies["pruned"]), best_lr(studies["plain"])
    assert a < middle and b < middle
    assert abs(math.log10(a) - math.log10(b)) < 1


def test_checkpoints_none_keeps_no_step_checkpoint(studies):
    assert not list(studies["plain"].glob("trial_*/epoch_*")) and not list(studies["pruned"].glob("trial_*/epoch_*"))
