"""The DPO recipe against TRL's DPOTrainer, and against itself (micro-batches, packing, precomputed reference)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl

TINY = Path(__file__).parent / "configs" / "tiny_dpo.yaml"
BETA = 0.2


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    """Conversational pairs of varied lengths: the right sum, and a wrong one said at more length."""
    rows = []
    for i in range(n):
        a, b = (3 * i + offset) % 29, (7 * i) % 31
        filler = " " + " ".join(["really"] * (i % 4)) if i % 4 else ""
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                     "chosen": [{"role": "assistant", "content": f"The answer is {a + b}."}],
                     "rejected": [{"role": "assistant", "content": f"It is{filler} {a + b + 1 + i % 3} or so."}]})
    return rows


@pytest.fixture()
def dpo_env(monkeypatch, tmp_path, tiny_model_dir, one_thread) -> dict:
    train = write_jsonl(tmp_path / "data" / "train.jsonl", pair_rows(16))
    val = write_jsonl(tmp_path / "data" / "validation.jsonl", pair_rows(6, offset=5))
    monkeypatch.setenv("TEST_MODEL_DIR", tiny_model_dir)
    monkeypatch.setenv("TEST_TRAIN_PAIRS", train)
    monkeypatch.setenv("TEST_VAL_PAIRS", val)
    monkeypatch.setenv("TEST_CKPT_DIR", str(tmp_path / "ckpt"))
    return {"ckpt": tmp_path / "ckpt", "tmp": tmp_path, "train": train, "val": val, "model": tiny_model_dir}


LORA = {"_target_": "nemo_like.components._peft.lora.PeftConfig", "target_modules": ["q_proj", "v_proj"],
        "dim": 4, "alpha": 8}


def make_recipe(overrides: dict | None = None):
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.train_dpo import TrainDPORecipe

    cfg = load_yaml_config(TINY)
    settings = {"checkpoint.enabled": False, "step_scheduler.val_every_steps": None, **(overrides or {})}
    for key, value in settings.items():
        cfg.set_by_path(key, value)
    recipe = TrainDPORecipe(cfg)
    recipe.setup()
    return recipe


def run_recipe(overrides: dict | None = None) -> list[dict]:
    return make_recipe(overrides).run_train_validation_loop()["history"]


METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


def trl_history(env: dict, loss_type: str, steps: int, lora_from=None, lr: float = 1e-3) -> list[dict]:
    """TRL's DPOTrainer on the same pairs, model, AdamW and clipping, in order; LoRA with our initial adapter."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(env["model"])
    load = lambda: AutoModelForCausalLM.from_pretrained(env["model"], dtype=torch.float32)  # noqa: E731
    policy, reference = load(), None
    if lora_from is None:
        reference = load()
    else:
        policy = get_peft_model(policy, LoraConfig(r=LORA["dim"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                                   target_modules=LORA["target_modules"]))
        ours = {n: p for n, p in lora_from.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_" in name:
                    param.copy_(ours[name.removeprefix("base_model.model.").replace(".default", "")])
    args = DPOConfig(output_dir=str(env["tmp"] / "trl"), per_device_train_batch_size=4, max_steps=steps,
                     learning_rate=lr, lr_scheduler_type="constant", weight_decay=0.0, optim="adamw_torch",
                     max_grad_norm=1.0, beta=BETA, loss_type=[loss_type], train_sampling_strategy="sequential",
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                     disable_tqdm=True)
    rows = [json.loads(line) for line in Path(env["train"]).read_text().splitlines()]
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h][:steps]


def assert_same_curves(ours: list[dict], theirs: list[dict], tol: float = 1e-5) -> None:
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for key in METRICS:
            assert abs(a[key] - b[key]) <= tol * max(1.0, abs(b[key])), (step, key, a[key], b[key])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_full_fine_tune_equals_trl_step_by_step(dpo_env, loss_type):
    """frozen_copy: per-step loss and rewards/* of 4 steps, ours in 2 micro-batches of 2, TRL in one batch of 4."""
    ours = run_recipe({"dpo.loss_type": loss_type, "clip_grad_norm": {"max_norm": 1.0}})
    theirs = trl_history(dpo_env, loss_type, steps=4)
    assert ours[-1]["loss"] < ours[0]["loss"] or loss_type == "hinge"
    assert_same_curves(ours, theirs)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_lora_with_adapters_off_equals_trl_step_by_step(dpo_env, loss_type):
    """adapter_off: the reference is the policy with its adapters switched off, as TRL does with PEFT."""
    recipe = make_recipe({"dpo.loss_type": loss_type, "clip_grad_norm": {"max_norm": 1.0}, "peft": LORA,
                          "optimizer.lr": 1e-2})
    assert recipe.mode == "adapter_off" and recipe.reference is None
    theirs = trl_history(dpo_env, loss_type, steps=4, lora_from=recipe.model, lr=1e-2)
    ours = recipe.run_train_validation_loop()["history"]
    assert ours[-1]["rewards/margins"] > 0
    assert_same_curves(ours, theirs)


def losses(history: list[dict]) -> list[float]:
    return [h["loss"] for h in history]


def worst(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_precomputed_reference_equals_the_live_one(dpo_env, lora):
    """``precomputed`` (one pass before training) gives the losses of ``adapter_off`` / ``frozen_copy``,
    validation included, and holds no second model."""
    base = {"step_scheduler.val_every_steps": 2, "peft": LORA if lora else None}
    live = make_recipe(base)
    stored = make_recipe({**base, "reference.mode": "precomputed", "reference.batch_size": 3})
    assert stored.reference is None and stored.precomputed["train"].complete
    assert live.mode == ("adapter_off" if lora else "frozen_copy")
    live_out, stored_out = live.run_train_validation_loop(), stored.run_train_validation_loop()
    assert worst(losses(live_out["history"]), losses(stored_out["history"])) < 1e-6
    assert abs(live_out["val_loss"] - stored_out["val_loss"]) < 1e-6


COLLATERS = "nemo_like.components.datasets.llm.preference_collater."


def test_micro_batches_and_packing_give_the_same_step_loss(dpo_env):
    """Local batch 8 in one micro-batch, in 4 of 2, packed into one row (no padding computed), and in
    the shared-prompt layout (each prompt computed once)."""
    whole = losses(run_recipe({"step_scheduler.local_batch_size": 8, "step_scheduler.global_batch_size": 8,
                               "step_scheduler.max_steps": 2}))
    split = losses(run_recipe({"step_scheduler.local_batch_size": 2, "step_scheduler.global_batch_size": 8,
                               "step_scheduler.max_steps": 2}))
    layouts = {name: losses(run_recipe({"step_scheduler.local_batch_size": 2, "step_scheduler.global_batch_size": 8,
                                         "step_scheduler.max_steps": 2, "dataloader.collate_fn": COLLATERS + name}))
               for name in ("packed_preference_collater", "shared_prompt_preference_collater")}
    assert whole[1] < whole[0]
    assert worst(whole, split) < 1e-6, (whole, split)
    for name, curve in layouts.items():
        assert worst(whole, curve) < 1e-5, (name, whole, curve)


def _train_on_rank(env: dict, overrides: dict) -> dict:
    """One rank of the DPO recipe (a forked child): its global per-step losses and validation loss."""
    os.environ.update(env)
    recipe = make_recipe({"step_scheduler.local_batch_size": 1, "step_scheduler.global_batch_size": 4,
                          "clip_grad_norm": {"max_norm": 1.0}, "step_scheduler.val_every_steps": 4, **overrides})
    out = recipe.run_train_validation_loop()
    return {"loss": losses(out["history"]), "val_loss": out["val_loss"],
            "accuracies": [h["rewards/accuracies"] for h in out["history"]]}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"peft": LORA}, {"reference.mode": "precomputed"}],
                         ids=["frozen-copy", "lora-adapter-off", "precomputed"])
def test_two_ranks_train_like_one(dpo_env, overrides):
    """FSDP2 over 2 ranks (the frozen copy sharded like the policy; the precomputing pass split over ranks)."""
    from nemo_like.components.distributed.fork_launcher import run_on_ranks

    env = {k: os.environ[k] for k in ("TEST_MODEL_DIR", "TEST_TRAIN_PAIRS", "TEST_VAL_PAIRS", "TEST_CKPT_DIR")}
    one = run_on_ranks(_train_on_rank, 1, env, overrides)[0]
    two = run_on_ranks(_train_on_rank, 2, env, overrides)
    assert two[0] == two[1]  # every rank reports the global figures
    assert worst(one["loss"], two[0]["loss"]) < 1e-6, (one, two[0])
    assert abs(one["val_loss"] - two[0]["val_loss"]) < 1e-6
    assert one["accuracies"] == two[0]["accuracies"]


@pytest.mark.parametrize("overrides, culprit", [
    ({"reference.mode": "adapter_off"}, "reference.mode: adapter_off needs LoRA adapters"),
    ({"reference.mode": "none"}, "reference.mode: none, but dpo.loss_type 'sigmoid'"),
    ({"dpo.loss_type": "kto"}, "dpo.loss_type"),
    ({"dpo.beta": 0}, "dpo.beta"),
    ({"loss_fn": {"_target_": "nemo_like.components.loss.dpo.DPOLoss"}}, "loss_fn"),
    ({"packed_sequence": {"packed_sequence_size": 64}}, "packed_preference_collater"),
])
def test_config_mistakes_are_one_line_before_anything_loads(dpo_env, overrides, culprit):
    from nemo_like.config.errors import ConfigError
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.dpo_config import check_dpo_config

    cfg = load_yaml_config(TINY)
    for key, value in overrides.items():
        cfg.set_by_path(key, value)
    with pytest.raises(ConfigError, match=culprit.replace("(", r"\(")) as err:
        check_dpo_config(cfg)
    assert "\n" not in str(err.value)


def test_reference_free_loss_runs_without_a_reference_from_the_command_line(dpo_env):
    """SimPO needs no reference: none is built; the entry script runs it and says a bad key in one line."""
    import subprocess
    import sys

    repo = Path(__file__).parent.parent
    cmd = [sys.executable, "examples/llm_dpo/dpo.py", "--config", str(TINY), "--dpo.loss_type", "simpo",
           "--dpo.gamma", "0.3", "--step_scheduler.max_steps", "2"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parameters: 0 trainable" not in proc.stderr  # no frozen copy was loaded
    records = [json.loads(line) for line in (dpo_env["ckpt"] / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1] and all("rewards/margins" in r for r in records)
    bad = subprocess.run([*cmd[:4], "--dpo.loss_typo", "simpo"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "loss_typo" in bad.stderr, bad.stderr


def test_dora_adapters_off_are_the_base_model(dpo_env):
    """With DoRA the adapted layer starts equal to its base, so the first step's loss is ln 2 exactly
    when the adapters-off reference is the base model; training then moves the margins."""
    history = run_recipe({"peft": {**LORA, "use_dora": True}, "optimizer.lr": 1e-2})
    assert abs(history[0]["loss"] - 0.6931471805599453) < 1e-6
    assert history[0]["rewards/margins"] == 0.0 and history[-1]["rewards/margins"] > 0


def test_a_judge_is_an_import_path_through_the_gate(dpo_env):
    """``generation_eval.judge`` names a function; one that runs commands is refused before anything loads."""
    from nemo_like.config.errors import ConfigError
    from nemo_like.config.loader import load_yaml_config
    from nemo_like.recipes.llm.dpo_config import check_dpo_config

    cfg = load_yaml_config(TINY)
    cfg.set_by_path("generation_eval", {"path_or_dataset_id": dpo_env["val"], "judge": "os.system"})
    with pytest.raises(ConfigError, match="generation_eval.judge"):
        check_dpo_config(cfg)
    cfg.set_by_path("generation_eval.judge", "nemo_like.components.rewards.answer_format.shows_answer_format")
    assert check_dpo_config(cfg).generation_eval.judge.endswith("shows_answer_format")
