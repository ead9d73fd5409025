"""``nemo-like advise``: the guide's ranges by data-set size, diagnoses of real tiny runs, and tune.yaml."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from conftest import addition_rows, write_jsonl
from nemo_like.cli_advise import advise_main
from nemo_like.components.tuning.advisor import (
    RunSettings,
    dataset_advice,
    dataset_search_space,
    diagnose_run,
    read_run,
    recommended_changes,
    tune_yaml,
)
from nemo_like.components.tuning.advisor_data import count_rows
from nemo_like.components.tuning.advisor_tables import size_bucket

TINY = str(Path(__file__).parent / "configs" / "tiny_sft.yaml")

# The guide's quick-start tables (lr, rank, epochs, global batch) by bucket, written out again on purpose.
GUIDE_LORA = {
    "small": {"lr": (1e-5, 5e-5), "dim": (4, 8), "epochs": (3, 5), "gbs": (16, 32)},
    "medium": {"lr": (1e-5, 1e-4), "dim": (8, 16), "epochs": (2, 4), "gbs": (32, 64)},
    "large": {"lr": (5e-5, 2e-4), "dim": (16, 64), "epochs": (1, 3), "gbs": (64, 128)},
}
GUIDE_SFT_LR = {"small": (1e-6, 5e-6), "medium": (5e-6, 2e-5), "large": (1e-5, 3e-5)}

# Three real runs of the SFT recipe on the tiny model: (train rows, validation rows, validation offset, overrides).
RUNS = {
    # lr 0.5 with AdamW: the loss climbs far above its start within a few steps
    "diverging": (32, 8, 5, ["--optimizer.lr", "0.5", "--step_scheduler.max_steps", "12",
                             "--step_scheduler.val_every_steps", "4"]),
    # 4 rows seen 30 times, validated on other questions: validation turns up while training keeps falling
    "overfitting": (4, 8, 11, ["--optimizer.lr", "5e-3", "--step_scheduler.max_steps", "30",
                               "--step_scheduler.val_every_steps", "2"]),
    # 64 rows, a short warm-up and cosine decay, validation from the same distribution
    "healthy": (64, 16, 5, ["--optimizer.lr", "2e-3", "--step_scheduler.max_steps", "24",
                            "--step_scheduler.val_every_steps", "4", "--lr_scheduler.lr_warmup_steps", "2",
                            "--lr_scheduler.lr_decay_style", "cosine"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, one_thread) -> dict[str, Path]:
    from nemo_like.recipes.llm.run import main

    root = tmp_path_factory.mktemp("advise_runs")
    out = {}
    for name, (n_train, n_val, offset, overrides) in RUNS.items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEST_MODEL_DIR", tiny_model_dir)
            mp.setenv("TEST_TRAIN_JSONL", write_jsonl(root / name / "train.jsonl", addition_rows(n_train)))
            mp.setenv("TEST_VAL_JSONL", write_jsonl(root / name / "val.jsonl", addition_rows(n_val, offset=offset)))
            mp.setenv("TEST_CKPT_DIR", str(root / name / "ckpt"))
            assert main(["--config", TINY, *overrides, "--step_scheduler.ckpt_every_steps", "1000",
                         "--step_scheduler.save_checkpoint_every_epoch", "false"]) == 0
        out[name] = root / name / "ckpt"
    return out


def _advise(capsys, *argv: str) -> tuple[int, str, str]:
    rc = advise_main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _kinds(run_dir: Path) -> dict[str, str]:
    train, val = read_run(str(run_dir))
    return {d.kind: d.severity for d in diagnose_run(train, val)}


# ---------------------------------------------------------------------------------------------- real runs

def test_diverging_run_is_named_with_a_lower_lr(runs, capsys):
    kinds = _kinds(runs["diverging"])
    assert kinds.get("diverging") == "problem"
    assert not {"healthy", "overfitting", "plateau", "not_decreasing"} & set(kinds)
    rc, out, _ = _advise(capsys, "--run", str(runs["diverging"]), "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["diagnoses"][0]["kind"] in ("diverging", "gradient_explosion")
    assert result["changes"]["optimizer.lr"] <= 0.5 / 3  # the run's lr was 0.5
    assert all("at step" in d["evidence"][0] for d in result["diagnoses"] if d["severity"] == "problem")


def test_overfitting_run_names_the_best_validation_step(runs, capsys):
    val = [json.loads(line) for line in (runs["overfitting"] / "validation.jsonl").read_text().splitlines()]
    best = min(val, key=lambda r: r["val_loss"])["step"]
    assert best < val[-1]["step"]  # the run really did overfit
    kinds = _kinds(runs["overfitting"])
    assert kinds.get("overfitting") == "problem"
    assert not {"healthy", "diverging", "not_decreasing", "gradient_explosion"} & set(kinds)
    rc, out, _ = _advise(capsys, "--run", str(runs["overfitting"]))
    assert rc == 0
    assert f"best at step {best}" in out
    assert f"--step_scheduler.max_steps {best + 1}" in out
    assert "EarlyStopping" in out


def test_healthy_run_is_called_healthy(runs, capsys):
    train, val = read_run(str(runs["healthy"]))
    found = diagnose_run(train, val)
    assert found[0].kind == "healthy"
    assert all(d.severity == "note" for d in found), [(d.kind, d.summary) for d in found]
    rc, out, _ = _advise(capsys, "--run", str(runs["healthy"]))
    assert rc == 0 and "looks healthy" in out


def test_tune_from_a_run_uses_its_saved_config_and_centres_on_the_advice(runs, tmp_path, capsys):
    out_yaml = tmp_path / "tune.yaml"
    rc, _, _ = _advise(capsys, "--run", str(runs["diverging"]), "--tune", str(out_yaml))
    assert rc == 0
    tuning = yaml.safe_load(out_yaml.read_text())["tuning"]
    assert tuning["recipe"].endswith("config.yaml") and Path(tuning["recipe"]).is_file()
    rc, out, _ = _advise(capsys, "--run", str(runs["diverging"]), "--json")
    advised = json.loads(out)["changes"]["optimizer.lr"]  # lr / 10 or lr / 3, as far as the loss climbed
    lr = tuning["search_space"]["optimizer.lr"]
    assert lr["type"] == "loguniform" and lr["low"] < advised < lr["high"] <= 0.5, (lr, advised)  # not above the run's


# ---------------------------------------------------------------------------------------------- data sets

@pytest.fixture(scope="module")
def sized_files(tmp_path_factory) -> dict[int, str]:
    root = tmp_path_factory.mktemp("advise_data")
    files = {}
    for n in (1_000, 20_000, 100_000):
        path = root / f"rows_{n}.jsonl"
        line = '{"instruction": "Add the numbers.", "input": "What is %d plus 2?", "response": "%d"}\n'
        path.write_text("".join(line % (i, i + 2) for i in range(n)), encoding="utf-8")
        files[n] = str(path)
    return files


@pytest.mark.parametrize("n,bucket", [(1_000, "small"), (20_000, "medium"), (100_000, "large")])
def test_dataset_sizes_get_the_guides_three_lora_ranges(sized_files, capsys, n, bucket):
    rc, out, _ = _advise(capsys, "--dataset", sized_files[n], "--method", "lora", "--model-size", "135M", "--json")
    assert rc == 0
    advice = json.loads(out)
    assert advice["rows"] == n and advice["bucket"] == bucket
    settings = {s["key"]: s for s in advice["settings"]}
    guide = GUIDE_LORA[bucket]
    for key, name in (("optimizer.lr", "lr"), ("peft.dim", "dim"), ("step_scheduler.num_epochs", "epochs"),
                      ("step_scheduler.global_batch_size", "gbs")):
        s = settings[key]
        assert (s["low"], s["high"]) == guide[name], key
        assert s["low"] <= s["value"] <= s["high"], key
        assert s["why"]
    assert settings["peft.alpha"]["value"] == 2 * settings["peft.dim"]["value"]
    assert f"--optimizer.lr {settings['optimizer.lr']['value']:.0e}".replace("e-0", "e-") in advice["overrides"]


def test_dataset_sizes_get_the_guides_sft_lr_and_print_overrides(sized_files, capsys):
    ranges = set()
    for n, bucket in ((1_000, "small"), (20_000, "medium"), (100_000, "large")):
        rc, out, _ = _advise(capsys, "--dataset", sized_files[n], "--method", "sft")
        assert rc == 0
        advice = dataset_advice(n, "sft")
        lr = advice.get("optimizer.lr")
        assert (lr.low, lr.high) == GUIDE_SFT_LR[bucket]
        ranges.add((lr.low, lr.high))
        assert "overrides to paste:" in out and advice.override_line() in out
        assert "--step_scheduler.num_epochs" in out and "--lr_scheduler.lr_warmup_steps" in out
        assert not advice.has("peft.dim")
    assert len(ranges) == 3


def test_bucket_edges_follow_the_guide():
    assert [size_bucket(n) for n in (1, 4_999, 5_000, 50_000, 50_001)] == ["small", "small", "medium", "medium",
                                                                            "large"]


def test_dpo_and_grpo_add_their_knobs():
    dpo = dataset_advice(2_000, "dpo")
    assert dpo.lora and dpo.get("dpo.beta").value == 0.1 and dpo.has("peft.dim")
    grpo = dataset_advice(2_000, "grpo")
    assert grpo.has("step_scheduler.max_steps") and not grpo.has("step_scheduler.num_epochs")
    assert grpo.get("grpo.num_generations").value == 8
    full = dataset_advice(2_000, "dpo", lora=False)
    assert not full.has("peft.dim") and full.get("optimizer.lr").value == dataset_advice(2_000, "sft").get(
        "optimizer.lr").value


def test_rows_are_counted_in_folders_parquet_and_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "set" / "train.jsonl", addition_rows(30))
    write_jsonl(tmp_path / "set" / "validation.jsonl", addition_rows(7))
    assert count_rows(str(tmp_path / "set"))[1] == 30
    assert count_rows(str(tmp_path / "set"), "validation")[1] == 7
    pq.write_table(pa.Table.from_pylist(addition_rows(12)), tmp_path / "rows.parquet")
    assert count_rows(str(tmp_path / "rows.parquet"))[1] == 12
    (tmp_path / "rows.csv").write_text('a,b\n1,"two\nlines"\n3,4\n', encoding="utf-8")
    assert count_rows(str(tmp_path / "rows.csv"))[1] == 2
    (tmp_path / "rows.json").write_text(json.dumps(addition_rows(5)), encoding="utf-8")
    assert count_rows(str(tmp_path / "rows.json"))[1] == 5


def test_tune_from_a_dataset_brackets_the_recommended_lr(sized_files, tmp_path, capsys):
    out_yaml = tmp_path / "tune.yaml"
    rc, out, _ = _advise(capsys, "--dataset", sized_files[20_000], "--method", "lora", "--tune", str(out_yaml),
                         "--recipe", TINY, "--trials", "5")
    assert rc == 0 and "tune search written" in out
    tuning = yaml.safe_load(out_yaml.read_text())["tuning"]
    recommended = dataset_advice(20_000, "lora").get("optimizer.lr")
    lr = tuning["search_space"]["optimizer.lr"]
    assert lr["type"] == "loguniform" and lr["low"] < recommended.value < lr["high"]
    assert lr["low"] <= recommended.low and lr["high"] >= recommended.high  # the guide's range fits inside
    assert math.isclose(math.log(recommended.value / lr["low"]), math.log(lr["high"] / recommended.value),
                        rel_tol=0.05)  # centred on a log scale
    assert 8 in tuning["search_space"]["peft.dim"]["choices"]
    assert tuning["recipe"] == str(Path(TINY).resolve()) and tuning["n_trials"] == 5
    assert tuning["sampler"] == {"_target_": "optuna.samplers.TPESampler", "seed": 0}
    assert tuning["objectives"] == [{"metric": "val_loss", "direction": "minimize"}]
    fixed = tuning["overrides"]  # the rest of the advice, the same for every trial
    assert fixed["peft._target_"].endswith("PeftConfig")  # tiny_sft.yaml has no peft section
    assert fixed["step_scheduler.max_steps"] is None  # tiny_sft.yaml's max_steps would cap the epochs searched
    assert fixed["step_scheduler.global_batch_size"] == 64 and "optimizer.lr" not in fixed


def test_tune_yaml_refuses_an_empty_space():
    with pytest.raises(ValueError):
        tune_yaml("r.yaml", {})
    assert "optimizer.lr" in dataset_search_space(dataset_advice(100, "sft"))


# ---------------------------------------------------------------------------------------------- CLI errors

def test_missing_files_and_empty_runs_exit_2_with_one_line(tmp_path, capsys):
    rc, _, err = _advise(capsys, "--dataset", str(tmp_path / "nope.jsonl"), "--method", "sft")
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training.jsonl").write_text("")
    rc, _, err = _advise(capsys, "--run", str(tmp_path / "run"))
    assert rc == 2 and err.count("\n") == 1 and "no training steps" in err
    rc, _, err = _advise(capsys, "--run", str(tmp_path / "absent"))
    assert rc == 2 and err.count("\n") == 1
    rc, _, err = _advise(capsys, "--dataset", str(tmp_path / "run" / "training.jsonl"), "--method", "sft")
    assert rc == 2 and err.count("\n") == 1
    rc, out, _ = _advise(capsys, "--help")
    assert rc == 0 and "examples:" in out


# ---------------------------------------------------------------------------------------------- synthetic curves

def _curve(losses: list[float], lrs: list[float] | None = None, grads: list[float] | None = None) -> list[dict]:
    return [{"step": i, "loss": loss, "lr": (lrs[i] if lrs else 1e-4), "grad_norm": (grads[i] if grads else 1.0)}
            for i, loss in enumerate(losses)]


def _decay(n: int, start: float = 3.0, end: float = 1.0, noise: float = 0.01, seed: int = 0) -> list[float]:
    rnd = random.Random(seed)
    return [(end + (start - end) * math.exp(-4 * i / n)) * (1 + rnd.uniform(-noise, noise)) for i in range(n)]


@pytest.mark.parametrize("scale", [1.0, 0.1, 10.0])
def test_rules_are_relative_to_the_curves_own_scale(scale):
    n = 120
    flat = [scale * (2.0 + 0.01 * math.sin(i)) for i in range(n)]
    assert "not_decreasing" in {d.kind for d in diagnose_run(_curve(flat), [])}
    healthy = [scale * v for v in _decay(n)]
    val = [{"step": s, "val_loss": scale * (1.2 + 1.8 * math.exp(-4 * s / n))} for s in range(9, n, 10)]
    kinds = [d.kind for d in diagnose_run(_curve(healthy), val)]
    assert kinds[0] == "healthy", kinds
    nan = healthy[:30] + [float("nan")] + healthy[31:]
    assert diagnose_run(_curve(nan), val)[0].kind == "diverging"


def test_spikes_grad_explosions_warmup_and_plateau_are_named():
    n = 120
    spiky = _decay(n)
    spiky[60] *= 2.5
    spiky[90] *= 2.0
    found = {d.kind: d for d in diagnose_run(_curve(spiky), [])}
    assert "loss_spikes" in found and "step 60" in found["loss_spikes"].evidence[0]
    assert "diverging" not in found

    grads = [1.0] * n
    grads[70] = 40.0
    found = {d.kind: d for d in diagnose_run(_curve(_decay(n), grads=grads), [])}
    assert "gradient_explosion" in found and "step 70" in found["gradient_explosion"].evidence[0]
    assert found["gradient_explosion"].changes["clip_grad_norm.max_norm"] == 1.0

    ramp = [min(1.0, (i + 1) / 60) * 1e-4 for i in range(n)]
    losses = [3.0 if i < 40 else 3.0 - 2.0 * (1 - math.exp(-(i - 40) / 20)) for i in range(n)]
    found = {d.kind: d for d in diagnose_run(_curve(losses, lrs=ramp), [], RunSettings(lr=1e-4, max_steps=n))}
    assert "slow_warmup" in found and "not_decreasing" not in found
    assert found["slow_warmup"].changes["lr_scheduler.lr_warmup_steps"] <= 10

    early = [3.0 - 1.5 * (1 - math.exp(-i / 4)) for i in range(n)]
    val = [{"step": s, "val_loss": 1.7} for s in range(9, n, 10)]
    found = {d.kind: d for d in diagnose_run(_curve(early), val, RunSettings(lr=1e-4, peft_dim=8))}
    assert "plateau" in found and found["plateau"].changes == {"optimizer.lr": 2e-4, "peft.dim": 16}


def test_a_noisy_curve_asks_for_a_bigger_batch_not_a_lower_lr():
    rnd = random.Random(0)
    noisy = [v * (1 + rnd.uniform(-0.5, 0.5)) for v in _decay(120)]
    found = {d.kind: d for d in diagnose_run(_curve(noisy), [], RunSettings(lr=1e-4, global_batch_size=16))}
    assert "noisy" in found and "loss_spikes" not in found and "diverging" not in found
    assert found["noisy"].changes == {"step_scheduler.global_batch_size": 32, "optimizer.lr": 1.4e-4}
    mild = [v * (1 + rnd.uniform(-0.1, 0.1)) for v in _decay(120)]
    assert "noisy" not in {d.kind for d in diagnose_run(_curve(mild), [])}


def test_rising_validation_with_flat_training_is_not_overfitting():
    n = 60
    flat_train = [2.0 + 0.005 * math.cos(i) for i in range(n)]
    rising_val = [{"step": s, "val_loss": 2.0 + 0.02 * s} for s in range(4, n, 5)]
    kinds = {d.kind for d in diagnose_run(_curve(flat_train), rising_val)}
    assert "overfitting" not in kinds


def test_a_policy_gradient_loss_near_zero_is_not_judged_by_ratios():
    losses = [0.001 * math.sin(i) for i in range(40)]  # a GRPO objective: around zero, either sign
    kinds = [d.kind for d in diagnose_run(_curve(losses), [], RunSettings(lr=1e-5, policy_gradient=True))]
    assert "loss_not_judged" in kinds and "diverging" not in kinds and "not_decreasing" not in kinds


def test_the_more_severe_finding_sets_a_shared_override():
    n = 60
    losses = [2.0 * (1 + 0.2 * i) for i in range(n)]  # rising: diverging
    found = diagnose_run(_curve(losses), [], RunSettings(lr=1e-3))
    merged = recommended_changes(found)
    assert found[0].kind == "diverging" and merged["optimizer.lr"] < 1e-3
